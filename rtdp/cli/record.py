"""`rtdp record robot=sim-arm|tcp://... device=scripted|keyboard|gamepad|spacemouse out=DATA.zarr episodes=N`:
record teleoperated demonstrations on a robot into a replay buffer.

Keys (in the terminal): Enter start/stop an episode, x discard it, r re-record it, p pause, SPACE e-stop,
u reset the e-stop, Q quit. `auto=true` starts each episode at once and ends it on success or max_steps (what
the scripted device and the demo use). Each finished episode is committed atomically, so a crash, a lost robot
server or Ctrl-C keeps every finished one; the same command resumes up to N (`OUT/record.json` keeps the seeds
and what happened to each episode). `rtdp data export-lerobot OUT DIR --fps HZ` exports to LeRobot v3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError
from rtdp.cli.robots import CLIENT_KEYS, DEVICES, connect_robot, driver_options, is_address, make_device

USAGE = ("rtdp record robot=sim-arm|tcp://HOST:PORT device=scripted|keyboard|gamepad|spacemouse out=DATA.zarr "
         "episodes=N [hz=20] [max_steps=200] [seed=0] [auto=false] [operator=auto] [robot.KEY=VALUE ...]")
META = "record.json"
KEYS = {
    "robot": Key("str", required=True, help="sim-arm, lerobot:<type>, package.module:Class, or tcp://HOST:PORT of "
                                            "`rtdp serve-robot`"),
    "device": Key("str", required=True, help=f"{' | '.join(DEVICES)}, lerobot:<type> or package.module:factory"),
    "out": Key("str", required=True, help="the replay buffer (zarr) to record into; resumed when it exists"),
    "episodes": Key("int", required=True, min=1, help="episodes the store should hold when done"),
    "hz": Key("float", 20.0, min=1.0, max=500.0, help="recording rate (the policy's control rate)"),
    "max_steps": Key("int", 200, min=1, help="ticks per episode at most"),
    "seed": Key("int", 0, min=0, help="seed of the first episode (a sim draws its scene from it)"),
    "auto": Key("bool", False, help="start episodes at once and end them on success or max_steps"),
    "stop_on_success": Key("bool", True, help="end an episode when the robot reports success (a sim does)"),
    "operator": Key("str", "auto", choices=("auto", "terminal", "none"),
                    help="where operator keys come from (auto: the terminal if stdin is one)"),
    "task": Key("str", "arm-lift", help="device=scripted: whose scripted expert"),
    "noise": Key("float", 0.0, min=0.0, max=1.0, help="device=scripted: DART noise (x half range) on what is "
                                                      "sent; the clean action is recorded"),
    **CLIENT_KEYS,
}


def _settings(opts: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """What a resume must match (the rest, like episodes=, may change between runs)."""
    return {k: opts[k] for k in ("robot", "device", "hz", "max_steps", "task", "noise", "seed")} | {
        "robot_options": sorted(extra)}


def _load_meta(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = out / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CLIError(f"{path} is unreadable ({err}): move it away to record into {out} afresh") from None
    if meta.get("settings") != settings:
        diff = {k: (meta.get("settings", {}).get(k), v) for k, v in settings.items()
                if meta.get("settings", {}).get(k) != v}
        raise CLIError(f"{out} was recorded with other settings {diff} (was, now): resume with the same ones, "
                       "or record into another out=")
    return meta


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    tmp = out / f".{META}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / META)


def main(argv: list[str]) -> int:
    opts, extra = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: key.startswith(("robot.", "device.")),
                             tail="robot.KEY=VALUE: a driver option (started here, see rtdp serve-robot --help); "
                                  "device.KEY=VALUE: a device option (lerobot:<type> teleoperators).")
    out = Path(opts["out"])
    if out.exists() and not out.is_dir():
        raise CLIError(f"out={out} is a file; give a zarr directory to record into")
    if is_address(opts["robot"]) and any(a.startswith("robot.") for a in extra):
        raise CLIError("robot.KEY=VALUE options configure a driver this command starts; a running server at "
                       f"{opts['robot']} takes them on its own command line")
    robot_args = [a for a in extra if a.startswith("robot.")]
    settings = _settings(opts, robot_args)
    meta = _load_meta(out, settings) if out.exists() else None
    if out.exists() and meta is None and any(out.iterdir()):
        raise CLIError(f"{out} exists but was not written by `rtdp record` (no {META}): record into another out=")
    if opts["device"] not in DEVICES and ":" not in opts["device"]:
        raise CLIError(f"device={opts['device']!r}: use one of {', '.join(DEVICES)}, lerobot:<type> or "
                       "package.module:factory")

    from rtdp.control.teleop import StatusLine, TeleopSession, record_meta
    from rtdp.datasets import ReplayBuffer, ReplayBufferError
    from rtdp.hardware.client import RemoteEnvError, ServerGone
    from rtdp.hardware.keys import NoKeys, make_keys

    try:
        keys = make_keys(opts["operator"])
    except RuntimeError as err:
        raise CLIError(str(err)) from None
    if isinstance(keys, NoKeys) and not opts["auto"] and opts["device"] in ("scripted", "keyboard"):
        raise CLIError("no operator keys (stdin is not a terminal, or operator=none): nobody can press Enter to start "
                       "an episode; pass auto=true, or run in a terminal")
    robot, local = connect_robot(opts["robot"], robot_args, opts)
    session = None
    try:
        device = make_device(opts["device"], robot.features, opts, driver_options(extra, "device."))
        device.connect()
        try:
            buf = ReplayBuffer.open(out, mode="a") if meta is not None else ReplayBuffer.create(out)
        except ReplayBufferError as err:
            raise CLIError(f"cannot record to {out}: {err}") from None
        if meta is None:
            meta = record_meta(settings)
            _write_meta(out, meta)
        status = StatusLine()
        session = TeleopSession(robot, device, hz=opts["hz"], keys=keys, max_steps=opts["max_steps"],
                                auto=opts["auto"], stop_on_success=opts["stop_on_success"], status=status)
        return _record(session, buf, meta, out, opts["episodes"], status)
    except (ServerGone, RemoteEnvError) as err:
        n = ReplayBuffer.open(out, "r").n_episodes if (out / "meta").exists() else 0
        print(f"rtdp record: error: {err}; the episode in progress is lost, the {n} finished episode(s) in {out} "
              "are kept (resume with the same command)", file=sys.stderr, flush=True)
        return 1
    finally:
        keys.close()
        if session is not None:
            session.device.disconnect()
        try:
            robot.disconnect()
        finally:
            if local is not None:
                local.close()


def _record(session, buf, meta: dict[str, Any], out: Path, episodes: int, status) -> int:
    seed = int(meta["next_seed"])
    if buf.n_episodes >= episodes:
        print(f"rtdp record: {out} already holds {buf.n_episodes} episode(s) (episodes={episodes}): nothing to do")
        return 0
    try:
        while buf.n_episodes < episodes:
            session.label = f"[{buf.n_episodes + 1}/{episodes}] "
            ep = session.episode(seed)
            entry = {"seed": seed, "outcome": ep.outcome, "steps": ep.steps, "success": ep.success,
                     "dropped_frames": ep.dropped_frames, "stale_ticks": ep.stale_ticks,
                     "rate_hz": round(ep.rate_hz, 2), "max_obs_age_ms": round(ep.max_obs_age_ms, 2)}
            if ep.outcome == "kept" and ep.steps > 0:
                buf.add_episode(ep.arrays())  # committed now: nothing later can lose it
                entry["index"] = buf.n_episodes - 1
            elif ep.outcome == "kept":
                entry["outcome"] = "empty"
            if ep.outcome != "rerecord":
                seed += 1  # a re-record replays the same scene
            meta["next_seed"] = seed
            meta["episodes"].append(entry)
            _write_meta(out, meta)
            status.show(f"episode seed {entry['seed']}: {entry['outcome']}, {ep.steps} steps, success "
                        f"{ep.success}, {ep.rate_hz:.1f} Hz, dropped frames {ep.dropped_frames}, stale ticks "
                        f"{ep.stale_ticks} ({buf.n_episodes}/{episodes} in {out})", final=True)
            if ep.outcome == "quit":
                break
    except KeyboardInterrupt:
        print(f"\nrtdp record: interrupted; the episode in progress is dropped, {buf.n_episodes} finished "
              f"episode(s) are in {out} (resume with the same command)", file=sys.stderr, flush=True)
        return 130
    print(f"rtdp record: {buf.n_episodes} episode(s) in {out}")
    return 0
