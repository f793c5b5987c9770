"""`rtdp serve-env`: the key=value dialect and its flags, `--help` listing every key, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from wire_helpers import LOOPBACK

from rtdp.cli import serve_env
from rtdp.cli.main import main
from rtdp.hardware import RemoteEnv


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rtdp serve-env: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("args, needle", [
    (["--max-message-mb", "inf"], "finite number"),
    (["max_message_mb=nan"], "finite number"),
    (["max_message_mb=0"], "max_message_mb"),
    (["max_message_mb=-1"], "max_message_mb"),
    (["--bind", "tcp://127.0.0.1:99999"], "not 1..65535"),
    (["bind=tcp://127.0.0.1:0"], "not 1..65535"),
    (["bind=udp://127.0.0.1:5555"], "is not tcp://"),
    (["pub=tcp://127.0.0.1:70000"], "not 1..65535"),
    (["bind=tcp://0.0.0.0:5555"], "reachable from the network"),
    (["bind=tcp://*:5555"], "keygen=DIR"),
    (["--max-sessions", "abc"], "must be an integer"),
    (["max_sessions=0"], "max_sessions must be >= 1"),
    (["idle_s=-1"], "idle_s"),
    (["insecure=maybe"], "true or false"),
    (["max_delta=0"], "max_delta must be > 0"),
    (["watchdog_s=inf"], "finite number"),
    (["keys=/nonexistent/keys"], "no key file"),
    (["max_sessions=2", "--max-sessions", "3"], "given twice"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["notkeyvalue"], "expected key=value"),
])
def test_bad_serve_env_input_is_one_line_and_exit_2(capsys, args, needle):
    assert main(["serve-env", f"task={LOOPBACK}", *args]) == 2
    _one_line_error(capsys, needle)


def test_keygen_refuses_an_unwritable_directory_and_an_existing_name(tmp_path, capsys, unwritable_dir):
    ro = unwritable_dir
    if ro is None:
        pytest.skip("no unwritable directory on this machine")
    target = ro / f"keys-{tmp_path.name}"
    assert main(["serve-env", f"keygen={target}"]) == 2
    _one_line_error(capsys, "cannot write keys")
    assert not target.exists()
    assert main(["serve-env", f"keygen={tmp_path / 'k'}", "key_name=laptop"]) == 0
    assert "serve with keys=" in capsys.readouterr().out
    assert main(["serve-env", f"keygen={tmp_path / 'k'}", "key_name=laptop"]) == 2
    _one_line_error(capsys, "already exists")


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve-env", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in serve_env.OPTIONS:
        assert f"  {option.key}=" in out and option.flag in out


def test_key_value_and_flag_forms_parse_to_the_same_options():
    kv, task, env_kw = serve_env.parse_args([f"task={LOOPBACK}", "bind=tcp://127.0.0.1:6000", "max_sessions=3",
                                             "max_message_mb=2", "safety=true", "image_size=96",
                                             "env.max_sessions=7"])
    flags, _, _ = serve_env.parse_args([f"task={LOOPBACK}", "--bind", "tcp://127.0.0.1:6000", "--max-sessions",
                                        "3", "--max-message-mb", "2", "--safety", "image_size=96"])
    assert kv == flags and task == LOOPBACK
    assert env_kw == {"image_size": 96, "max_sessions": 7}  # env.KEY passes a key the server also uses


def test_serve_env_in_the_key_value_dialect_serves(spawn):
    _, endpoint = spawn("tcp://127.0.0.1:*", "max_sessions=1", "max_message_mb=0.5")
    env = RemoteEnv(endpoint, timeout_s=5.0)
    assert env.server_info["max_message_bytes"] == 2**19
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    env.close()
