"""`rtdp teleop robot=sim-arm|tcp://... device=keyboard|gamepad|spacemouse|scripted [hz=20] [seconds=S]`: drive a
robot by hand (nothing is recorded; `rtdp record` records). Keyboard: w/s a/d i/k l/j move, g toggles the
gripper, [ ] change the speed; SPACE e-stop, u reset it, p pause, Q quit. `reset_estop=true` clears a latched
e-stop on the robot server and exits.
"""

from __future__ import annotations

import time

from rtdp.cli.args import Key, parse_keys
from rtdp.cli.main import CLIError
from rtdp.cli.robots import CLIENT_KEYS, DEVICES, connect_robot, driver_options, is_address, make_device

USAGE = ("rtdp teleop robot=sim-arm|tcp://HOST:PORT device=keyboard|gamepad|spacemouse|scripted [hz=20] "
         "[seconds=S] [operator=auto] [reset_estop=false] [robot.KEY=VALUE ...]")
KEYS = {
    "robot": Key("str", required=True, help="sim-arm, lerobot:<type>, package.module:Class, or tcp://HOST:PORT"),
    "device": Key("str", "keyboard", help=f"{' | '.join(DEVICES)}, lerobot:<type> or package.module:factory"),
    "hz": Key("float", 20.0, min=1.0, max=500.0, help="command rate"),
    "seconds": Key("float", min=0.1, help="stop after this long (default: until Q)"),
    "operator": Key("str", "auto", choices=("auto", "terminal", "none"),
                    help="where operator keys come from (auto: the terminal if stdin is one)"),
    "home": Key("bool", True, help="home the robot first (a sim re-draws its scene from seed)"),
    "seed": Key("int", 0, min=0, help="the scene's seed (a sim)"),
    "task": Key("str", "arm-lift", help="device=scripted: whose scripted expert"),
    "noise": Key("float", 0.0, min=0.0, max=1.0, help="device=scripted: DART noise on what is sent"),
    "reset_estop": Key("bool", False, help="clear the robot server's latched e-stop, then exit"),
    **CLIENT_KEYS,
}


def main(argv: list[str]) -> int:
    opts, extra = parse_keys(argv, KEYS, USAGE, __doc__, rest=lambda key: key.startswith(("robot.", "device.")),
                             tail="robot.KEY=VALUE: a driver option (see rtdp serve-robot --help).")
    robot_args = [a for a in extra if a.startswith("robot.")]
    if is_address(opts["robot"]) and robot_args:
        raise CLIError(f"robot.KEY=VALUE options configure a driver; the server at {opts['robot']} takes them")
    from rtdp.control.teleop import StatusLine, TeleopSession
    from rtdp.hardware.client import RemoteEnvError, ServerGone
    from rtdp.hardware.keys import NoKeys, make_keys

    if opts["reset_estop"]:
        robot, local = connect_robot(opts["robot"], robot_args, opts)
        try:
            robot.reset_estop()
            print(f"rtdp teleop: e-stop reset on {robot.address}")
        finally:
            robot.disconnect()
            if local is not None:
                local.close()
        return 0
    try:
        keys = make_keys(opts["operator"])
    except RuntimeError as err:
        raise CLIError(str(err)) from None
    if isinstance(keys, NoKeys) and opts["seconds"] is None:
        raise CLIError("no operator keys (stdin is not a terminal, or operator=none) and no seconds=: nothing could "
                       "stop the session; run in a terminal or pass seconds=S")
    robot, local = connect_robot(opts["robot"], robot_args, opts)
    device = None
    try:
        device = make_device(opts["device"], robot.features, opts, driver_options(extra, "device."))
        device.connect()
        max_steps = int(opts["seconds"] * opts["hz"]) if opts["seconds"] is not None else 10**9
        session = TeleopSession(robot, device, hz=opts["hz"], keys=keys, max_steps=max_steps, auto=True,
                                stop_on_success=False, home=opts["home"], status=StatusLine())
        t0 = time.perf_counter()
        ep = session.episode(opts["seed"], record=False)
        status = robot.status()
        print(f"\nrtdp teleop: {ep.steps} commands in {time.perf_counter() - t0:.1f} s ({ep.outcome}); "
              f"dropped frames {ep.dropped_frames}; server refusals "
              f"{status.get('stats', {}).get('refused', 0)}, e-stop {'latched' if status.get('estop') else 'off'}")
    except (ServerGone, RemoteEnvError) as err:
        print(f"rtdp teleop: error: {err}", flush=True)
        return 1
    finally:
        keys.close()
        if device is not None:
            device.disconnect()
        try:
            robot.disconnect()
        finally:
            if local is not None:
                local.close()
    return 0
