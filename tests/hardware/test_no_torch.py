"""The robot side of the wire runs without torch: importing it must not pull torch in."""

from __future__ import annotations

import subprocess
import sys


def test_hardware_serve_env_serve_robot_and_the_sim_arm_import_without_torch():
    code = ("import sys, rtdp.hardware, rtdp.hardware.loopback_env, rtdp.cli.serve_env, rtdp.cli.serve_robot, "
            "rtdp.hardware.robot_server, rtdp.hardware.remote_robot, rtdp.hardware.teleop, rtdp.hardware.keys, "
            "rtdp.hardware.lerobot_bridge, rtdp.hardware.robot_env, rtdp.envs.sim_arm; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"torch imported by rtdp.hardware: {out.stdout} {out.stderr}"
