"""The `rtdp` command itself: help, unknown commands, and user errors as one line with exit 2."""

import subprocess
import sys

import pytest

from rtdp.cli.main import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_an_unknown_command_is_refused_with_the_list(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_module_imports_and_has_main():
    import importlib

    for name, (module, _) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_user_errors_are_one_line_with_exit_2_under_python_dash_m():
    # torchrun runs `python -m rtdp.cli.main`: the error must not become a traceback there either
    proc = subprocess.run([sys.executable, "-m", "rtdp.cli.main", "data", "info", "/no/such/store.zarr"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "/no/such/store.zarr" in proc.stderr


def test_demo_refuses_unknown_options(capsys):
    assert main(["demo", "epsiodes=3"]) == 2
    assert "unknown key 'epsiodes'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "run", "collect", "calibrate-rti", "calibrate-cache", "demo",
                                     "serve-robot", "teleop", "record", "deploy"])
def test_every_key_value_command_lists_its_keys_in_help(command, capsys):
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "keys:" in out and all(f"  {key} " in out for key in module.KEYS)


def test_train_help_lists_what_the_registries_hold(capsys):
    from rtdp.policy.samplers import SAMPLERS

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SAMPLERS) and "rti_renoise" in out and "unet1d" in out and "edm" in out



@pytest.mark.parametrize("load, cores, threads", [(0.2, 2, 2), (1.1, 2, 1), (3.8, 2, 1), (1.0, 16, 15)])
def test_the_demo_takes_the_cores_the_load_leaves_free_and_at_least_one(monkeypatch, load, cores, threads):
    from rtdp.cli import demo

    monkeypatch.setattr(demo.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(demo.os, "cpu_count", lambda: cores)
    assert demo.free_cores() == threads


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_the_arm(tmp_path):
    """`make demo`'s job, small: collect, train briefly, eval two samplers, a 20 Hz async run over ZeroMQ, then
    record on the real-time sim arm, fine-tune on it and deploy through the robot server."""
    proc = subprocess.run([sys.executable, "-m", "rtdp.cli.main", "demo", "episodes=5", "steps=30",
                           "eval_episodes=2", "robot_episodes=2", "robot_steps=5", "deploy_episodes=1",
                           f"out={tmp_path}"], capture_output=True, text=True, check=False, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in ("arm_lift_dart.zarr", "train/checkpoints/last/model.safetensors", "eval_ddim10/eval.json",
                 "eval_sdp/eval.json", "run/metrics.json", "run/timing.png", "robot_demos.zarr/record.json",
                 "robot_train/checkpoints/last/model.safetensors", "deploy/metrics.json", "deploy/timing.png",
                 "deploy/rollouts.zarr", "deploy_fine_tuned/metrics.json"):
        assert (tmp_path / path).exists(), path
    assert "rtdp demo (arm-lift)" in proc.stdout and "deploy sdp @ sim-arm" in proc.stdout
    assert "fine-tuning from" in proc.stderr + proc.stdout
