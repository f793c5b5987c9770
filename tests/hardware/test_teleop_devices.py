"""Teleop devices and operator keys: the terminal reader in a pty, the keyboard mapping, the scripted expert,
and the optional gamepad/SpaceMouse devices through stand-in libraries (their real ones are optional extras)."""

from __future__ import annotations

import os
import sys
import time
import types

import numpy as np
import pytest

from rtdp.hardware.keys import ScriptedKeys, TerminalKeys, make_keys, operator_events
from rtdp.hardware.robot import ActionFeature, RobotObservation
from rtdp.hardware.teleop import GamepadDevice, KeyboardDevice, ScriptedDevice, SpaceMouseDevice, TeleopError

ARM = ActionFeature((5,), "float32", ("dx", "dy", "dz", "dyaw", "gripper"), (-1,) * 5, (1,) * 5,
                    ("zero", "zero", "zero", "zero", "last"))


def test_terminal_keys_read_a_pty_without_blocking_and_restore_it():
    import termios

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        keys = TerminalKeys(slave)
        assert keys.poll() == ""  # nothing typed: returns at once
        os.write(master, b"w \r")
        time.sleep(0.05)
        assert keys.poll() == "w \r"
        keys.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_refuse_a_pipe_with_what_to_do():
    r, w = os.pipe()
    try:
        with pytest.raises(RuntimeError, match="operator=none"):
            TerminalKeys(r)
    finally:
        os.close(r)
        os.close(w)


def test_operator_events_and_scripted_keys():
    keys = ScriptedKeys([(0.0, "\r"), (10.0, "Q")])
    assert operator_events(keys.poll()) == ["start_stop"]
    keys.push("x r p u ")
    assert operator_events(keys.poll()) == ["discard", "estop", "rerecord", "estop", "pause", "estop",
                                            "reset_estop", "estop"]
    assert make_keys("none").poll() == ""


def test_keyboard_keys_move_a_velocity_dimension_for_a_pulse_and_toggle_the_gripper():
    dev = KeyboardDevice(ARM, speed=0.5, pulse_s=0.1)
    a = dev.read(None, "w")
    np.testing.assert_allclose(a, [0.5, 0, 0, 0, -1])
    assert dev.read(None, "")[0] == 0.5  # still inside the pulse (a terminal repeats, it never releases)
    time.sleep(0.12)
    assert dev.read(None, "")[0] == 0.0
    np.testing.assert_allclose(dev.read(None, "gi"), [0, 0, 0.5, 0, 1])


def test_the_scripted_device_replays_the_expert_and_labels_the_clean_action():
    from rtdp.envs.arm import ArmLiftEnv
    from rtdp.envs.experts import arm_lift_action, make_expert

    state = ArmLiftEnv().reset(seed=0)[0]["state"]
    obs = RobotObservation(0, 0, {"state": state})
    clean = ScriptedDevice(ARM, make_expert("arm-lift"))
    np.testing.assert_allclose(clean.read(obs), arm_lift_action(state))
    noisy = ScriptedDevice(ARM, make_expert("arm-lift"), noise=0.3, seed=0)
    sent = noisy.read(obs)
    np.testing.assert_allclose(noisy.last_label, arm_lift_action(state))
    assert not np.allclose(sent, noisy.last_label) and np.all(np.abs(sent) <= 1)


def test_gamepad_and_spacemouse_without_their_libraries_say_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)
    with pytest.raises(TeleopError, match=r"pygame.*\[teleop\]"):
        GamepadDevice(ARM).connect()
    with pytest.raises(TeleopError, match=r"pyspacemouse.*\[teleop\]"):
        SpaceMouseDevice(ARM).connect()


def _fake_pygame(axes, buttons):
    js = types.SimpleNamespace(init=lambda: None, get_numaxes=lambda: len(axes), get_axis=lambda i: axes[i],
                               get_numbuttons=lambda: len(buttons), get_button=lambda i: buttons[i])
    joystick = types.SimpleNamespace(init=lambda: None, quit=lambda: None, get_count=lambda: 1,
                                     Joystick=lambda i: js)
    return types.SimpleNamespace(init=lambda: None, joystick=joystick,
                                 event=types.SimpleNamespace(pump=lambda: None))


def test_the_gamepad_maps_sticks_dead_zone_gripper_and_buttons(monkeypatch):
    axes, buttons = [0.5, -0.05, 0.0, 0.0, 0.8, 0.0], [False] * 8
    monkeypatch.setitem(sys.modules, "pygame", _fake_pygame(axes, buttons))
    pad = GamepadDevice(ARM)
    pad.connect()
    np.testing.assert_allclose(pad.read(None), [0.5, 0.0, -0.8, 0.0, -1.0])  # stick y inverted, dead zone
    buttons[0] = buttons[7] = True
    assert pad.read(None)[4] == 1.0 and pad.events() == ["start_stop"]
    assert pad.read(None)[4] == 1.0 and pad.events() == []  # a held button toggles once


def test_the_spacemouse_maps_its_axes(monkeypatch):
    state = types.SimpleNamespace(x=0.2, y=-0.3, z=0.0, roll=0, pitch=0, yaw=0.6, buttons=[0, 1])
    monkeypatch.setitem(sys.modules, "pyspacemouse", types.SimpleNamespace(open=lambda: True, read=lambda: state))
    sm = SpaceMouseDevice(ARM)
    sm.connect()
    np.testing.assert_allclose(sm.read(None), [0.2, -0.3, 0.0, 0.6, -1.0])
    assert sm.events() == ["start_stop"]
