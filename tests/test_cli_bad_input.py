"""Every bad command-line input a user can type gets one line saying what was wrong, exit code 2, and leaves
no file behind (the table of issue 20's findings, plus the ones found beside them)."""

from __future__ import annotations

import pytest

from rtdp.cli.main import main

FILE = "a_file.txt"  # created in the working directory: an out= that is a file
CASES = [
    (["train", "training.max_minutes=abc"], "training.max_minutes='abc' is not valid"),
    (["train", "training.num_steps=abc"], "training.num_steps='abc' is not valid"),
    (["train", "training.batch_size=-5"], "training.batch_size='-5' is out of range"),
    (["train", "num_threads=0"], "num_threads='0' is out of range"),
    (["train", f"out_dir={FILE}"], "is a file"),
    (["train", "policy=mode", "policy.denoiser.top_k=5"], "1 <= top_k <= num_experts"),
    (["train", "policy=mode", "policy.denoiser.top_k=0"], "policy.denoiser.top_k='0' is out of range"),
    (["eval", "task=pusht", "agent=expert", "out=ev", "seed=-1"], "seed='-1' is out of range"),
    (["eval", "task=pusht", "agent=expert", "out=ev", "num_threads=0"], "num_threads='0' is out of range"),
    (["eval", "task=pusht", "agent=expert", "out=ev", "episodes=0"], "episodes='0' is out of range"),
    (["eval", "task=nope", "agent=expert", "out=ev"], "nope"),
    (["eval", "task=pusht", "agent=expert", f"out={FILE}"], "is a file"),
    (["collect", "task=arm-lift", "episodes=1", "out=d.zarr", "seed=-1"], "seed='-1' is out of range"),
    (["collect", "task=arm-lift", "episodes=1", "out=d.zarr", "max_steps=0"], "max_steps='0' is out of range"),
    (["collect", "task=arm-lift", "episodes=1", "out=d.zarr", "keep_failed=maybe"], "takes true or false"),
    (["collect", "task=arm-lift", "episodes=1", "out=d.zarr", "no_such_option=1"], "no_such_option"),
    (["run", "agent=expert", "env=arm-lift", "out=r", "seed=-1"], "seed='-1' is out of range"),
    (["run", "agent=expert", "env=arm-lift", "out=r", "hz=nan"], "hz='nan' is not valid"),
    (["run", "agent=expert", "env=arm-lift", "out=r", "hz=inf"], "hz='inf' is not valid"),
    (["run", "agent=expert", "env=arm-lift", "out=r", "timeout=nan"], "timeout='nan' is not valid"),
    (["run", "agent=expert", "task=arm-lift", "env=tcp://garbage", "out=r"], "env=tcp://garbage"),
    (["run", "agent=expert", "env=arm-lift", f"out={FILE}"], "is a file"),
    (["calibrate-rti", "checkpoint=/no/such/run"], "does not exist"),
    (["calibrate-rti", "checkpoint=/no/such/run", "windows=0"], "windows='0' is out of range"),
    (["calibrate-cache", "checkpoint=/no/such/run", "budget=5"], "does not exist"),
    (["calibrate-cache", "checkpoint=/no/such/run", "budget=0"], "budget='0' is out of range"),
    (["calibrate-cache", "checkpoint=/no/such/run", "budget=5", "observations=0"], "observations='0' is out of range"),
    (["calibrate-cache", "checkpoint=/no/such/run"], "missing budget=..."),
    (["eval", "task=pusht", "agent=expert", "out=ev", "cache=bac"], "cache= caches a transformer policy's blocks"),
    (["demo", "episodes=0"], "episodes='0' is out of range"),
    (["demo", "minutes=soon"], "minutes='soon' is not valid"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:1] + c[0][-1:]) for c in CASES])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text("not a directory")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]


def test_collect_into_an_unwritable_directory_is_one_line_and_exit_2(unwritable_dir, tmp_path, capsys):
    if unwritable_dir is None:
        pytest.skip("no unwritable directory on this machine")
    target = unwritable_dir / f"demos-{tmp_path.name}.zarr"
    assert main(["collect", "task=arm-lift", "episodes=1", f"out={target}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and err.count("\n") == 1 and not target.exists()
