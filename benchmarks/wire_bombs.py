"""Decode bombs benchmark: another client's step round trip while one peer floods the env server with bombs.

An `EnvServer` (LoopbackEnv, 20-dim state) runs in its own process. A client times `step` round trips
(p50/p99) idle, then while a second process keeps `--in-flight` bombs queued at the server continuously:

- `issue`: the two bombs of issue 20, alternating: a 16 MiB array of empty maps
  (`b"\\xdd" + n + b"\\x80" * n`) and ~930k tiny inline arrays (16 MiB); `issue_1mib`: the same at 1 MiB;
- `budget`: the worst envelope that passes every size bound: 64 KiB of empty lists in arrays of 4096, so the
  server walks its whole object budget (4096 headers) before refusing it.

Two servers: one with the 16 MiB message limit the issue's bombs fit in (`--max-message-mb 16`, the old
default: the bombs reach the decoder, which refuses them by the envelope bound), and one with the default
limit (1 MiB: ZeroMQ drops a 16 MiB frame in its I/O thread). The server's peak RSS (VmHWM) is read from
/proc at the end of each; RSS is sampled during each phase.
Target (issue 20): the other client's p99 with bombs <= 2x idle, server RSS bounded.

    .venv/bin/python benchmarks/wire_bombs.py [--steps 3000] [--out benchmarks/results/wire_bombs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdp import metrics

MIB = 2**20


def issue_bombs(size: int = 16 * MIB) -> list[bytes]:
    """The issue's two bombs, each `size` bytes or just under."""
    import msgpack

    n = size - 5
    maps = b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    one = msgpack.packb({"__nd__": [b"\x01", "|u1", [1]]})
    head = msgpack.packb({"v": 1, "type": "step", "seq": 1, "ts": {}, "body": {"a": []}})[:-1]
    k = (size - len(head) - 5) // len(one)
    inline = head + b"\xdd" + struct.pack(">I", k) + one * k
    return [maps, inline]


def budget_bomb() -> list[bytes]:
    import msgpack

    rows = [[] for _ in range(4096)]
    env = msgpack.packb({"v": 1, "type": "step", "seq": 1, "ts": {}, "body": {"a": [rows] * 15}})
    assert len(env) <= 65536, len(env)
    return [env]


# ------------------------------------------------------------------------------------------- processes
def serve(max_message_mb: float) -> None:
    from rtdp.hardware.loopback_env import LoopbackEnv
    from rtdp.hardware.server import EnvServer

    srv = EnvServer(lambda: LoopbackEnv(state_dim=20, max_steps=10**9, terminate_on_success=False),
                    "tcp://127.0.0.1:*", max_message_bytes=int(max_message_mb * MIB))
    print(srv.endpoint, flush=True)
    srv.serve_forever(poll_ms=50)


def bomb(endpoint: str, kind: str, in_flight: int) -> None:
    """Keep `in_flight` bombs queued at the server until stdin closes; print how many were answered."""
    import zmq

    bombs = {"issue": issue_bombs, "issue_1mib": lambda: issue_bombs(MIB), "budget": budget_bomb}[kind]()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sent = answered = 0
    t0 = time.perf_counter()
    print("ready", flush=True)
    while not stop.is_set():
        while sent - answered < in_flight:
            sock.send(bombs[sent % len(bombs)], copy=False)
            sent += 1
        if sock.poll(20):
            sock.recv_multipart()
            answered += 1
    print(json.dumps({"sent": sent, "answered": answered, "seconds": time.perf_counter() - t0}), flush=True)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------- measuring
def measure(env, steps: int, server_pid: int) -> dict:
    """Time `steps` round trips; sample the server's RSS every 50 steps."""
    a = np.zeros(2, np.float32)
    rtt, rss = [], []
    for i in range(steps):
        t = time.perf_counter()
        env.step(a)
        rtt.append(time.perf_counter() - t)
        if i % 50 == 0:
            rss.append(_rss_mb(server_pid))
    return {**metrics.summarize_latencies(rtt), "server_rss_mb_max": max(rss), "server_rss_mb_mean":
            float(np.mean(rss))}


def run_server(limit_mb: float, kinds: tuple[str, ...], steps: int, in_flight: int) -> dict:
    """Idle, then each bomb stream, against one server process; its RSS idle and peak."""
    from rtdp.hardware.client import RemoteEnv

    server = _spawn("--serve", "--max-message-mb", str(limit_mb))
    endpoint = server.stdout.readline().strip()
    if not endpoint:
        raise SystemExit(server.stderr.read()[-2000:])
    phases: dict[str, dict] = {}
    try:
        env = RemoteEnv(endpoint, timeout_s=10.0, retries=0)
        env.reset(seed=0)
        measure(env, 500, server.pid)  # warm up
        rss_idle = _rss_mb(server.pid)
        phases["idle"] = measure(env, steps, server.pid)
        for kind in kinds:
            bomber = _spawn("--bomb", endpoint, "--kind", kind, "--in-flight", str(in_flight))
            assert bomber.stdout.readline().strip() == "ready", bomber.stderr.read()[-2000:]
            time.sleep(1.0)  # let the stream reach steady state
            phases[kind] = measure(env, steps, server.pid)
            out, _ = bomber.communicate("", timeout=60)
            phases[kind]["bombs"] = b = json.loads(out.strip().splitlines()[-1])
            b["answered_per_s"] = b["answered"] / b["seconds"]
        peak = _rss_mb(server.pid, "VmHWM")
        env.close()
    finally:
        server.kill()
        server.wait(timeout=10)
    idle_p99 = phases["idle"]["p99_ms"]
    for ph in phases.values():
        ph["p99_over_idle"] = ph["p99_ms"] / idle_p99
    return {"max_message_mb": limit_mb, "phases": phases, "server_rss_idle_mb": rss_idle,
            "server_rss_peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--in-flight", type=int, default=4, help="bombs kept queued at the server")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "wire_bombs.json"))
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-message-mb", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--bomb", metavar="ENDPOINT", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="issue", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args.max_message_mb)
    if args.bomb:
        return bomb(args.bomb, args.kind, args.in_flight)

    load_start = list(os.getloadavg())
    servers = {"limit_16mib": run_server(16.0, ("issue", "budget"), args.steps, args.in_flight),
               "limit_default_1mib": run_server(1.0, ("issue", "issue_1mib", "budget"), args.steps,
                                                args.in_flight)}
    result = metrics.record("wire_bombs", loadavg_start=load_start, loadavg_end=list(os.getloadavg()),
                            steps=args.steps, in_flight=args.in_flight, servers=servers,
                            target="another client's step p99 with bombs <= 2x idle; server RSS bounded")
    metrics.write_json(args.out, result)
    print(f"{'server':<19} {'phase':<10} {'p50 ms':>7} {'p99 ms':>7} {'p99/idle':>8} {'bombs/s':>8} "
          f"{'RSS max MB':>10}")
    for name, srv in servers.items():
        for phase, ph in srv["phases"].items():
            rate = ph.get("bombs", {}).get("answered_per_s", 0.0)
            print(f"{name:<19} {phase:<10} {ph['p50_ms']:7.3f} {ph['p99_ms']:7.3f} {ph['p99_over_idle']:8.2f} "
                  f"{rate:8.1f} {ph['server_rss_mb_max']:10.1f}")
        print(f"{name:<19} server RSS {srv['server_rss_idle_mb']:.1f} MB idle, {srv['server_rss_peak_mb']:.1f} MB "
              "peak (VmHWM)")
    print(f"loadavg {load_start} -> {result['loadavg_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
