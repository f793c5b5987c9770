"""Robot timing benchmark: the robot server's state stream and command path on loopback, and deploy success
through it against `rtdp eval` on the same policies (the latency-faithful gap).

1. For each rate (100 and 500 Hz): `rtdp serve-robot robot=sim-arm` in another process at that control rate
   (physics 500 / 1000 Hz); this process owns the robot, streams commands at 100 Hz, and subscribes to every
   state message (no conflation), while a policy infers back to back in a thread here (the checkpoint's
   DDIM-10 when one is given, else a torch matmul loop of similar cost). Reported:
   - publish rate and jitter: |interval - period| between consecutive published states, from the server's
     send stamps (p50/p99), and as received here; frames the robot made that were never published;
   Each rate runs with default scheduling and with the server's threads and the physics thread under
   SCHED_FIFO 50 (`rt=50`, as a robot PC would run it; reported as unavailable without CAP_SYS_NICE).
   - command-to-actuation latency on loopback: client send -> the driver's command call (`command_to_driver`,
     what a bus write would be) and -> the first physics tick that used it (`command_to_physics`, the sim's
     own tick quantisation added), from the server's and the driver's counters.
2. Deploy success on arm-lift for the SDP and DDIM-10 samplers of `--checkpoint`: `rtdp deploy` through the
   robot server (real-time arm, asynchronous inference) against `rtdp eval` (the env waits for the policy),
   `--episodes` seeded episodes each (seeds 0..N-1). Skipped, saying so, when the checkpoint is missing.

Targets: publish jitter p99 <= 1 ms at 500 Hz with inference running; command-to-actuation p99 <= 2 ms on
loopback; deploy success within 10 points of `rtdp eval` for SDP.

    python benchmarks/robot_timing.py [--seconds 10] [--episodes 10] [--checkpoint /work/main/runs/bench/train_arm_lift]
                                      [--skip-deploy] [--out benchmarks/results/robot_timing.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics

RATES = ((100, 500), (500, 1000))  # (control Hz, physics Hz)


class Inference(threading.Thread):
    """Back-to-back inference in a thread: the checkpoint's DDIM-10, or a matmul loop when none is given."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(daemon=True)
        import torch

        torch.set_num_threads(1)
        self.stop, self.calls, self.kind = threading.Event(), 0, "matmul 256x256 x 40 (no checkpoint)"
        self.policy = None
        if checkpoint is not None and checkpoint.exists():
            from rtdp.policy.loading import load_policy

            self.policy = load_policy(checkpoint, ["sampler=ddim", "sampler.num_steps=10"])
            self.kind = f"DDIM-10 of {checkpoint}"

    def run(self) -> None:
        import torch

        obs = {"state": np.zeros((1, getattr(self.policy, "n_obs_steps", 2), 18), np.float32)}
        a = torch.randn(256, 256)
        while not self.stop.is_set():
            if self.policy is not None:
                self.policy.act(obs)
            else:
                for _ in range(40):
                    a = torch.tanh(a @ a) * 0.5
            self.calls += 1


def timing(control_hz: int, physics_hz: int, seconds: float, inference: Inference, rt: int = 0) -> dict:
    from rtdp.cli.robots import LocalServer
    from rtdp.hardware.pubsub import StateSubscriber
    from rtdp.hardware.remote_robot import RemoteRobot

    server = LocalServer("sim-arm", [f"robot.control_hz={control_hz}", f"robot.physics_hz={physics_hz}",
                                     f"robot.rt={rt}"], ("max_command_hz=1000", "watchdog_s=1.0", f"rt={rt}"))
    try:
        robot = RemoteRobot(server.address)
        robot.connect()
        robot.reset_to_home(seed=0)
        sub = StateSubscriber(robot.info["state_endpoint"], conflate=False, hwm=100_000)
        time.sleep(0.5)
        while sub.recv(0.01) is not None:
            pass
        robot.status()
        t_end = time.monotonic() + seconds
        sent, recv, seqs, frames = [], [], [], []
        calls0 = inference.calls
        next_cmd, k = time.monotonic(), 0
        while time.monotonic() < t_end:
            if time.monotonic() >= next_cmd:  # 100 Hz commands: a slow sine in z, fingers open
                robot.command(np.array([0, 0, 0.3 * np.sin(k / 50), 0, -1], np.float32))
                k += 1
                next_cmd += 0.01
            msg = _recv_one(sub, 0.002)
            while msg is not None:
                sent.append(msg.ts["sent"])
                recv.append(time.perf_counter_ns())
                seqs.append(msg.seq)
                frames.append(msg.body["frame"])
                msg = _recv_one(sub, 0.0)
        status = robot.status()
        sub.close()
        robot.disconnect()
    finally:
        server.close()
    sent_a, recv_a, seqs_a = np.array(sent), np.array(recv), np.array(seqs)
    consecutive = np.diff(seqs_a) == 1
    period_ns = 1e9 / control_hz
    pub_err = np.abs(np.diff(sent_a)[consecutive] - period_ns) / 1e9
    recv_err = np.abs(np.diff(recv_a)[consecutive] - period_ns) / 1e9
    frames_a = np.array(frames)
    lat = status.get("latency_ms", {})
    driver = status.get("driver", {})
    return {"control_hz": control_hz, "physics_hz": physics_hz, "seconds": seconds, "rt": rt,
            "realtime": (status.get("realtime"), driver.get("realtime")),
            "states_received": int(seqs_a.size), "publish_rate_hz": float(seqs_a.size / seconds),
            "states_lost_between_server_and_here": int(np.sum(np.diff(seqs_a) - 1)),
            "robot_frames_not_published": int(np.sum(np.diff(frames_a) - 1)),
            "publish_jitter": metrics.summarize_latencies(pub_err),
            "receive_jitter": metrics.summarize_latencies(recv_err),
            "command_received_ms": lat.get("command_received"),
            "command_to_driver_ms": lat.get("command_to_driver"),
            "command_to_physics_ms": _add(lat.get("command_to_driver"), driver.get("command_to_physics_ms")),
            "driver": {k: driver.get(k) for k in ("ticks", "late_ticks", "slipped_ticks", "commands")},
            "server": status.get("stats"), "inference_calls": inference.calls - calls0}


def _recv_one(sub, timeout_s: float):
    """One state message, in order (the subscriber is not conflated: every message is kept)."""
    from rtdp.hardware import protocol as P

    if not sub._sock.poll(int(timeout_s * 1000)):
        return None
    return P.decode(P.unpack(sub._sock.recv()))


def _add(a: dict | None, b: dict | None) -> dict | None:
    """Percentiles of a sum, bounded: p50 and p99 of `a` plus those of `b` (an upper bound for the p99)."""
    if not a or not b:
        return None
    return {"p50_upper": a["p50"] + b["p50"], "p99_upper": a["p99"] + b["p99"],
            "physics_tick_p50": b["p50"], "physics_tick_p99": b["p99"]}


def deploy_vs_eval(checkpoint: Path, episodes: int) -> dict:
    from rtdp.cli.main import main as rtdp

    out: dict = {"episodes": episodes, "checkpoint": str(checkpoint)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in (("sdp", ["sampler=sdp"]), ("ddim10", ["sampler=ddim", "sampler.num_steps=10"])):
            ev, dep = Path(tmp) / f"eval_{name}", Path(tmp) / f"deploy_{name}"
            t0 = time.perf_counter()
            code_e = rtdp(["eval", "task=arm-lift", f"checkpoint={checkpoint}", f"episodes={episodes}", "n_envs=1",
                           "num_threads=1", f"out={ev}", *overrides])
            t1 = time.perf_counter()
            code_d = rtdp(["deploy", f"checkpoint={checkpoint}", "robot=sim-arm", "mode=async",
                           f"episodes={episodes}", f"out={dep}", "operator=none", *overrides])
            t2 = time.perf_counter()
            e = json.loads((ev / "eval.json").read_text())["summary"] if code_e == 0 else {}
            d = json.loads((dep / "metrics.json").read_text()) if (dep / "metrics.json").is_file() else {}
            ds = d.get("summary", {})
            out[name] = {"eval_success": e.get("success_rate"), "deploy_success": ds.get("success_rate"),
                         "gap_points": None if e.get("success_rate") is None or ds.get("success_rate") is None
                         else round(100 * (e["success_rate"] - ds["success_rate"]), 1),
                         "deploy_inference_latency": ds.get("inference_latency"),
                         "deploy_deadline_misses": ds.get("deadline_misses"),
                         "deploy_robot_server": d.get("robot_server", {}).get("stats"),
                         "exit_codes": [code_e, code_d], "wall_s": [round(t1 - t0, 1), round(t2 - t1, 1)]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="timing run per rate")
    ap.add_argument("--episodes", type=int, default=10, help="deploy/eval episodes per sampler")
    ap.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "bench" / "train_arm_lift")
    ap.add_argument("--skip-deploy", action="store_true", help="timing only")
    ap.add_argument("--skip-timing", action="store_true", help="deploy success only")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "robot_timing.json")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    have_ckpt = args.checkpoint.exists()
    if not have_ckpt:
        print(f"robot_timing: checkpoint {args.checkpoint} not found: timing runs with a matmul load instead of "
              "the policy, and the deploy-success part is skipped (pass --checkpoint RUN_DIR)", file=sys.stderr)
    result: dict = {"config": vars(args) | {"checkpoint": str(args.checkpoint)}}
    if not args.skip_timing:
        inference = Inference(args.checkpoint if have_ckpt else None)
        inference.start()
        try:
            result["inference_load"] = inference.kind
            result["timing"] = [timing(c, p, args.seconds, inference, rt) for rt in (0, 50) for c, p in RATES]
        finally:
            inference.stop.set()
            inference.join(timeout=30)
    if args.skip_deploy or not have_ckpt:
        result["deploy"] = {"skipped": "--skip-deploy" if args.skip_deploy else f"no checkpoint at {args.checkpoint}"}
    else:
        result["deploy"] = deploy_vs_eval(args.checkpoint, args.episodes)
    result["loadavg"] = os.getloadavg()
    record = metrics.record("robot_timing", **result)
    metrics.write_json(args.out, record)
    print(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
