"""A task served by `rtdp serve-env` in another process or on another machine, as the env of `rtdp eval`,
`rtdp collect` and bench rows (`env=tcp://…`): how robosuite, which needs its own environment, is evaluated
from the main one. The task id still names the task (its observation mode, expert and episode length)."""

from __future__ import annotations

import gymnasium as gym

SCHEMES = ("tcp://", "ipc://")  # where an `rtdp serve-env` can be reached
HELLO_TIMEOUT_S = 5.0    # no answer to the first request within this (twice): no server at the address
REPLY_TIMEOUT_S = 60.0   # afterwards: a session's first reset builds its env on the server (robosuite: seconds)


def is_address(text: str) -> bool:
    """Whether `text` names an env server (tcp://HOST:PORT, ipc://PATH) rather than a task made in-process."""
    return text.startswith(SCHEMES)


def make_remote(task_id: str, address: str, obs_mode: str, max_episode_steps: int | None = None,
                render_mode: str | None = None) -> gym.Env:
    """A client of the env server at `address`, checked to serve `task_id` in `obs_mode` (a server that made its
    env by task id says which); with `max_episode_steps`, episodes are cut here (the server keeps its own limit)."""
    import zmq

    from rtdp.hardware.client import RemoteEnv, ServerGone

    if render_mode is not None:
        raise ValueError(f"env={address}: frames for videos are rendered where the env runs; record them there "
                         "or evaluate without videos")
    try:
        env = RemoteEnv(address, timeout_s=HELLO_TIMEOUT_S, retries=1)
    except (ServerGone, zmq.ZMQError) as err:
        raise ConnectionError(f"env={address}: no env server answered ({err}); start one where the simulator "
                              f"is installed: rtdp serve-env task={task_id} obs_mode={obs_mode} bind={address}"
                              ) from None
    env.set_timeout(REPLY_TIMEOUT_S)
    served = (env.metadata.get("rtdp_task"), env.metadata.get("rtdp_obs_mode"))
    if served[0] is not None and served != (task_id, obs_mode):  # an env served by id says what it is
        env.close()
        raise ValueError(f"env={address} serves task={served[0]} obs_mode={served[1]}, not task={task_id} "
                         f"obs_mode={obs_mode}; start the server with task={task_id} obs_mode={obs_mode}")
    if max_episode_steps is not None:
        return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
    return env
