"""What `robot=` and `device=` name, shared by `rtdp serve-robot`, `teleop`, `record` and `deploy`.

`robot=` is `sim-arm` (rtdp's real-time MuJoCo arm), `lerobot:<type>` (a LeRobot robot by its config type,
e.g. `lerobot:so101_follower`), `package.module:Class` (any rtdp `Robot`), or the address of a running
`rtdp serve-robot` (`tcp://HOST:PORT`). Driver options are `robot.KEY=VALUE`. The commands that drive a
robot always go through a robot server: for a driver name they start `rtdp serve-robot` as a child process on
loopback and connect to it, as they would to one on a robot PC.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rtdp.cli.args import Key, parse_value
from rtdp.cli.main import CLIError

log = logging.getLogger(__name__)
DEVICES = ("scripted", "keyboard", "gamepad", "spacemouse")
# the bridge's own options among robot.KEY=VALUE for lerobot:<type> (the rest configure LeRobot's robot)
BRIDGE_KEYS = ("rate_hz", "low", "high", "max_rate", "home", "home_s", "calibrate")
CLIENT_KEYS = {
    "timeout": Key("float", 2.0, min=0.001, help="robot server reply timeout, s"),
    "keys": Key("str", help="CURVE key folder (server.key + client.key_secret) for a robot server off loopback"),
    "server_key": Key("str", help="the server's public CURVE key file (instead of keys=)"),
    "client_key": Key("str", help="this client's secret CURVE key file (instead of keys=)"),
}


def driver_options(extra: list[str], prefix: str = "robot.") -> dict[str, Any]:
    """`robot.KEY=VALUE` (or `prefix`) arguments as keyword arguments (typed: 3, 0.5, true, [1, 2])."""
    out: dict[str, Any] = {}
    for arg in extra:
        key, _, value = arg.partition("=")
        if key.startswith(prefix):
            out[key.removeprefix(prefix)] = _value(value)
    return out


def _value(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(v.strip()) for v in text[1:-1].split(",") if v.strip()]
    return parse_value(text)


def is_address(spec: str) -> bool:
    return spec.startswith(("tcp://", "ipc://"))


def make_driver(spec: str, kw: dict[str, Any]):
    """The robot driver `spec` names (not connected), or a CLIError saying what was wrong."""
    try:
        if spec == "sim-arm":
            from rtdp.envs.sim_arm import SimArm

            return SimArm(**kw)
        if spec.startswith("lerobot:"):
            return make_lerobot_robot(spec.partition(":")[2], kw)
        if ":" in spec and not is_address(spec):
            mod, _, attr = spec.partition(":")
            return getattr(importlib.import_module(mod), attr)(**kw)
    except CLIError:
        raise
    except (TypeError, ValueError, ImportError, AttributeError) as err:
        raise CLIError(f"cannot make robot {spec!r} with {kw}: {err}") from None
    raise CLIError(f"robot={spec!r}: use sim-arm, lerobot:<type> (e.g. lerobot:so101_follower), "
                   "package.module:Class, or the tcp:// address of `rtdp serve-robot`")


def _lerobot_config(what: str, kind: str, kw: dict[str, Any], package: str, base: str, noun: str):
    """LeRobot's config of choice type `kind` under `package`.`base` (robots or teleoperators), parsed by
    draccus from `kw`; `what` is the key (`robot`, `device`) that names it in the one-line errors."""
    try:
        import importlib

        import draccus
        config_base = getattr(importlib.import_module(package), base)
    except ImportError as err:
        raise CLIError(f"{what}=lerobot:{kind} needs LeRobot ({err}): pip install -e '.[lerobot]'") from None
    _register_all(package)
    try:
        config_class = config_base.get_choice_class(kind)
    except KeyError:
        known = ", ".join(sorted(config_base.get_known_choices()))
        raise CLIError(f"{what}=lerobot:{kind}: LeRobot has no {noun} {kind!r}; known: {known}") from None
    try:
        return draccus.parse(config_class, args=[f"--{k}={_draccus(v)}" for k, v in kw.items()])
    except SystemExit:
        raise CLIError(f"{what}=lerobot:{kind}: LeRobot refused the options {kw} (see the message above)") from None


def make_lerobot_robot(kind: str, kw: dict[str, Any]):
    """A LeRobot robot of config type `kind` (LeRobot parses the options, cameras included), bridged."""
    bridge = {k: kw.pop(k) for k in BRIDGE_KEYS if k in kw}
    config = _lerobot_config("robot", kind, kw, "lerobot.robots", "RobotConfig", "robot type")
    from lerobot.robots.utils import make_robot_from_config

    from rtdp.hardware.lerobot_bridge import LeRobotRobot

    return LeRobotRobot(make_robot_from_config(config), **bridge)


def make_lerobot_teleop(kind: str, action, kw: dict[str, Any]):
    """A LeRobot teleoperator of config type `kind` (e.g. so101_leader), bridged to `action`'s names."""
    calibrate = kw.pop("calibrate", True)
    config = _lerobot_config("device", kind, kw, "lerobot.teleoperators", "TeleoperatorConfig", "teleoperator")
    from lerobot.teleoperators.utils import make_teleoperator_from_config

    from rtdp.hardware.lerobot_bridge import LeRobotTeleop

    return LeRobotTeleop(action, make_teleoperator_from_config(config), calibrate=calibrate)


def _register_all(package: str) -> None:
    """Import every device package of LeRobot's `package`, so their config types register (as LeRobot's own
    scripts do); one whose optional dependencies are missing is skipped."""
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"{package}.{info.name}")
            except Exception as err:  # noqa: BLE001 - a device needing an SDK that is not installed
                log.debug("LeRobot's %s.%s is not importable: %s", package, info.name, err)


def _draccus(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class LocalServer:
    """`rtdp serve-robot robot=SPEC` as a child process on a free loopback port; `address` once it serves."""

    def __init__(self, spec: str, driver_args: list[str], server_args: tuple[str, ...] = (),
                 timeout_s: float = 60.0):
        # the child's log, kept for the error message (a file: a pipe nobody reads would fill and stall it)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="rtdp-serve-robot-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [sys.executable, "-c", "import sys; from rtdp.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "serve-robot", f"robot={spec}", "bind=tcp://127.0.0.1:*", *server_args, *driver_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        self.address = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if " at tcp://" in line:
                self.address = line.split(" at ")[1].split()[0]
                return
            if self.proc.poll() is not None:
                break
        self.close()
        raise CLIError(f"rtdp serve-robot robot={spec} did not start: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text().strip().splitlines()
        return text[-1] if text else f"no output (log {self.log.name})"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def connect_robot(spec: str, extra: list[str], opts: dict[str, Any], server_args: tuple[str, ...] = ()):
    """(a connected RemoteRobot, the LocalServer started for it or None) for `robot=spec`."""
    import zmq

    from rtdp.hardware.client import RemoteEnvError, ServerGone
    from rtdp.hardware.curve import CurveKeyError
    from rtdp.hardware.remote_robot import RemoteRobot

    local = None
    address = spec
    if not is_address(spec):
        local = LocalServer(spec, extra, server_args)
        address = local.address
    elif extra:
        raise CLIError(f"robot options {extra} apply to a driver, not to the running server at {spec}: give them "
                       "to its `rtdp serve-robot`")
    try:
        robot = RemoteRobot(address, timeout_s=opts["timeout"], keys=opts.get("keys"),
                            server_key=opts.get("server_key"), client_key=opts.get("client_key"))
        robot.connect()
    except (ServerGone, RemoteEnvError, ValueError, CurveKeyError, zmq.ZMQError) as err:
        if local is not None:
            local.close()
        raise CLIError(f"robot={spec}: {err}") from None
    return robot, local


def make_device(spec: str, robot_features, opts: dict[str, Any], device_kw: dict[str, Any] | None = None):
    """The teleop device `device=` names, for a robot with `robot_features` (`device.KEY=VALUE` options)."""
    from rtdp.hardware import teleop

    action = robot_features.action
    if spec == "scripted":
        from rtdp.envs.experts import make_expert

        try:
            expert = make_expert(opts.get("task") or "arm-lift")
        except Exception as err:  # noqa: BLE001 - unknown task, missing simulator
            raise CLIError(f"device=scripted: {err}") from None
        return teleop.ScriptedDevice(action, expert, noise=opts.get("noise") or 0.0, seed=opts.get("seed") or 0)
    if spec == "keyboard":
        return teleop.KeyboardDevice(action)
    if spec == "gamepad":
        return teleop.GamepadDevice(action)
    if spec == "spacemouse":
        return teleop.SpaceMouseDevice(action)
    if spec.startswith("lerobot:"):
        return make_lerobot_teleop(spec.partition(":")[2], action, dict(device_kw or {}))
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)(action)
        except (ImportError, AttributeError, TypeError) as err:
            raise CLIError(f"cannot make device {spec!r}: {err}") from None
    raise CLIError(f"device={spec!r}: use one of {', '.join(DEVICES)} or package.module:factory")
