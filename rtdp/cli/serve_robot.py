"""`rtdp serve-robot robot=sim-arm|lerobot:<type>|module:Class [bind=tcp://127.0.0.1:5560] [robot.KEY=VALUE ...]`:
serve a robot over ZeroMQ: state published at the robot's rate, latest-only commands through the safety layer
(limits, rate limit, watchdog hold, NaN/inf refused, latched e-stop), request/reply for connect, home, status
and the e-stop. The state and command sockets bind beside `bind` (port + 1, + 2) unless given.
No torch here (a LeRobot robot brings LeRobot's own dependencies). See docs/robots.md.
"""

from __future__ import annotations

import logging
import signal
import sys

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError
from rtdp.cli.robots import driver_options, make_driver

USAGE = ("rtdp serve-robot robot=sim-arm|lerobot:<type>|package.module:Class [bind=tcp://127.0.0.1:5560] "
         "[watchdog_s=0.25] [max_rate=R] [keys=DIR] [robot.KEY=VALUE ...]")
KEYS = {
    "robot": Key("str", required=True, help="the driver: sim-arm, lerobot:<type> or package.module:Class"),
    "bind": Key("str", "tcp://127.0.0.1:5560", help="request/reply address (tcp://HOST:PORT, port * = any)"),
    "state_bind": Key("str", help="state PUB address (default: bind's port + 1)"),
    "command_bind": Key("str", help="command PULL address (default: bind's port + 2)"),
    "watchdog_s": Key("float", 0.25, min=0.005, max=60.0, help="hold when commands stop for this long, s"),
    "max_command_hz": Key("float", min=1.0, max=10000.0, help="commands applied per second at most "
                          "(faster ones are coalesced; default the robot's rate)"),
    "max_rate": Key("float", min=0.0, help="largest change of each action dimension per second (narrows the "
                    "driver's own limit)"),
    "low": Key("float", help="lower limit of every action dimension (narrows the driver's)"),
    "high": Key("float", help="upper limit of every action dimension (narrows the driver's)"),
    "owner_idle_s": Key("float", 5.0, min=0.0, help="a silent owner may be replaced by another client after this"),
    "keys": Key("str", help="CURVE key directory (rtdp serve-env keygen=DIR); required off loopback"),
    "rt": Key("int", 0, min=0, max=99, help="SCHED_FIFO priority of the state and command threads (0 = off; "
                                            "needs CAP_SYS_NICE)"),
    "insecure": Key("bool", False, help="serve a non-loopback address without keys (unauthenticated, in clear)"),
}


def main(argv: list[str]) -> int:
    opts, extra = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: key.startswith("robot."),
                             tail="robot.KEY=VALUE: a driver option (sim-arm: control_hz, physics_hz, cameras, "
                                  "command_delay_s, drop_prob, obs_noise, ...; lerobot:<type>: LeRobot's config "
                                  "fields, e.g. robot.port=/dev/ttyACM0 robot.id=my_arm, plus rate_hz, max_rate, "
                                  "home).")
    from rtdp.cli.serve_env import server_keys
    from rtdp.hardware.robot_server import derive_endpoint

    binds = [opts["bind"], opts["state_bind"] or derive_endpoint(opts["bind"], 1, "state"),
             opts["command_bind"] or derive_endpoint(opts["bind"], 2, "command")]
    keys = server_keys(binds, opts["keys"], opts["insecure"])
    driver = make_driver(opts["robot"], driver_options(extra))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import zmq

    from rtdp.hardware.robot_server import serve_robot

    # SIGTERM (docker stop, systemd, kill) shuts down like Ctrl-C: the robot holds, sockets close.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def ready(server) -> None:
        auth = ", CURVE on" if server.keys is not None else ""
        print(f"rtdp serve-robot: serving {opts['robot']} at {server.endpoint} (state {server.state_endpoint}, "
              f"commands {server.command_endpoint}, {server.features.rate_hz:g} Hz{auth})", flush=True)

    try:
        stats = serve_robot(driver, opts["bind"], on_ready=ready, state_bind=binds[1], command_bind=binds[2],
                            watchdog_s=opts["watchdog_s"], max_command_hz=opts["max_command_hz"],
                            max_rate=opts["max_rate"], low=opts["low"], high=opts["high"],
                            owner_idle_s=opts["owner_idle_s"], keys=keys, insecure=opts["insecure"],
                            realtime_priority=opts["rt"])
    except zmq.ZMQError as err:
        raise CLIError(f"cannot bind {opts['bind']} (or the state/command ports beside it): {err}; pick free "
                       "ports or tcp://127.0.0.1:*") from None
    except Exception as err:  # noqa: BLE001 - a driver that cannot connect: one line, not a traceback
        raise CLIError(f"robot {opts['robot']} failed: {type(err).__name__}: {err}") from None
    print(f"rtdp serve-robot: stopped; {stats}", file=sys.stderr, flush=True)
    return 0
