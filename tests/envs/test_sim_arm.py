"""`robot=sim-arm`: the arm-lift arm as a robot on its own real-time clock, with fault injection."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rtdp.envs.arm import ArmLiftEnv
from rtdp.envs.sim_arm import SimArm

UP = np.array([0, 0, 1, 0, -1], np.float32)


def _frames_during(arm: SimArm, seconds: float) -> int:
    f0 = arm.observe().frame
    time.sleep(seconds)
    return arm.observe().frame - f0


def test_it_steps_on_its_own_clock_without_commands():
    with SimArm(control_hz=100) as arm:
        assert _frames_during(arm, 0.3) > 5  # frames advance with no command at all
        assert arm.stats()["commands"] == 0


def test_an_ee_delta_command_moves_one_env_step_then_the_arm_waits_for_the_next():
    with SimArm(control_hz=100) as arm:
        z0 = float(arm.reset_to_home(seed=0).state["state"][8])
        arm.command(UP)  # one command: the env's 2 cm step, spread over 50 ms, then it stops
        time.sleep(0.3)
        z1 = float(arm.observe().state["state"][8])
        assert 0.01 < z1 - z0 < 0.03
        for _ in range(6):  # a command every 50 ms: continuous motion at 0.4 m/s
            arm.command(UP)
            time.sleep(0.05)
        assert float(arm.observe().state["state"][8]) > z1 + 0.06
        arm.command(np.array([0, 0, 0, 0, -1], np.float32))  # zero motion: it stops where it is
        time.sleep(0.1)
        z2 = float(arm.observe().state["state"][8])
        time.sleep(0.2)
        assert abs(float(arm.observe().state["state"][8]) - z2) < 0.003


def test_with_step_s_zero_a_command_holds_until_the_next_one():
    with SimArm(control_hz=100, step_s=0) as arm:
        z0 = float(arm.reset_to_home(seed=0).state["state"][8])
        arm.command(UP)  # a velocity kept tick after tick
        time.sleep(0.3)
        assert float(arm.observe().state["state"][8]) > z0 + 0.06


def test_homing_draws_the_scene_from_the_seed_as_the_env_does():
    env = ArmLiftEnv()
    expected = env.reset(seed=7)[0]["state"]
    with SimArm() as arm:
        got = arm.reset_to_home(seed=7).state["state"]
    np.testing.assert_allclose(got[11:14], expected[11:14], atol=1e-6)  # the cube
    np.testing.assert_allclose(got[6:9], expected[6:9], atol=1e-3)  # the hand at home


def test_command_delay_postpones_actuation():
    with SimArm(control_hz=100, command_delay_s=0.15) as arm:
        arm.command(UP)
        time.sleep(0.05)
        assert not np.allclose(arm.observe().info["applied"], UP)  # still the hold
        time.sleep(0.25)
        np.testing.assert_allclose(arm.observe().info["applied"], UP)
        assert arm.stats()["command_to_physics_ms"]["p50"] >= 150


def test_dropped_frames_leave_gaps_in_the_frame_numbers():
    with SimArm(control_hz=100, drop_prob=0.5, seed=1) as arm:
        seen = set()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if arm.wait_for_tick(0.1):
                seen.add(arm.observe().frame)
        assert arm.stats()["dropped_frames"] > 0
        assert max(seen) - min(seen) + 1 > len(seen)  # some frame numbers never came


def test_camera_frames_come_with_their_own_timestamps():
    with SimArm(control_hz=100, cameras=1, camera_hz=10) as arm:
        deadline = time.monotonic() + 20
        while "image" not in arm.observe().images and time.monotonic() < deadline:
            time.sleep(0.05)
        obs = arm.observe()
        assert obs.images["image"].shape == (96, 96, 3) and obs.images["image"].dtype == np.uint8
        assert obs.image_t_ns["image"] <= obs.t_ns + 200_000_000


@pytest.mark.parametrize("kw, fragment", [({"control_hz": 50}, "100..500"), ({"physics_hz": 400}, ">= 500"),
                                          ({"control_hz": 300, "physics_hz": 1000}, "multiple"),
                                          ({"drop_prob": 1.0}, "drop_prob")])
def test_rates_and_faults_out_of_range_are_refused(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        SimArm(**kw)
