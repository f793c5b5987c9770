"""rtdp.control: the fixed-rate control loop, timestamped action scheduling, asynchronous inference, run
metrics. numpy only; torch runs only inside the agent's `act`."""

from rtdp.control.clock import RateClock, wait_until
from rtdp.control.loop import ControlLoop, EpisodeResult, run_episodes
from rtdp.control.scheduler import ActionScheduler

__all__ = ["ActionScheduler", "ControlLoop", "EpisodeResult", "RateClock", "run_episodes", "wait_until"]
