"""The control loop drives a robot through the same interface as an env: `RobotEnv` over a served sim arm."""

from __future__ import annotations

import numpy as np

from rtdp.control import ControlLoop
from rtdp.envs.experts import make_expert
from rtdp.envs.sim_arm import SimArm
from rtdp.hardware.remote_robot import RemoteRobot
from rtdp.hardware.robot_env import RobotEnv
from rtdp.hardware.robot_server import RobotServer


def test_the_control_loop_runs_the_expert_on_the_served_real_time_arm():
    with RobotServer(SimArm(control_hz=100), "tcp://127.0.0.1:*").start() as srv:
        env = RobotEnv(RemoteRobot(srv.endpoint))
        assert env.observation_space["state"].shape == (18,) and env.action_space.shape == (5,)
        loop = ControlLoop(env, make_expert("arm-lift"), hz=20, mode="sync", max_steps=200, record_data=True)
        try:
            ep = loop.run_episode(seed=3)
        finally:
            loop.close()
            env.close()
    assert ep.success and ep.terminated  # lifted: the robot reported success and the episode ended
    captured = [s.obs_ns for s in ep.steps if s.executed]
    assert captured == sorted(captured) and len(set(captured)) > 1  # each step saw a newer, timestamped state
    assert np.stack(ep.data["action"]).shape[1] == 5


def test_pausing_holds_the_robot_and_an_e_stop_ends_the_episode():
    with RobotServer(SimArm(control_hz=100), "tcp://127.0.0.1:*").start() as srv:
        events: list[str] = []
        env = RobotEnv(RemoteRobot(srv.endpoint), events=lambda: [events.pop()] if events else [])
        env.reset(seed=0)
        up = np.array([0, 0, 1, 0, -1], np.float32)
        events.append("pause")
        for _ in range(5):
            _, _, _, truncated, info = env.step(up)
            assert info["paused"] and not truncated
        assert env.counts["paused_steps"] == 5
        events.append("estop")
        _, _, terminated, truncated, info = env.step(up)
        assert truncated and not terminated and info["estop"]
        assert env.robot.status()["estop"] is True
        env.close()
