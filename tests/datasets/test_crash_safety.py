"""Appending an episode is atomic: a writer killed at any point leaves every earlier episode intact."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rtdp_data_factory import assert_episode_equal, make_episode

from rtdp.datasets import ReplayBuffer, ReplayBufferError
from rtdp.datasets.replay_buffer import DurableLocalStore

REPO = Path(__file__).resolve().parents[2]


class _Crash(BaseException):
    """Stands in for the process dying: raised from inside a store write, never caught by the buffer."""


def _check_after_crash(path: Path, committed: list[dict], extra: dict) -> None:
    """Earlier episodes intact, lengths consistent, appending continues, the new episode reads back."""
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes in (len(committed), len(committed) + 1)
    for i, ep in enumerate(committed):
        assert_episode_equal(buf.get_episode(i), ep)
    for key in buf.keys():  # noqa: SIM118 (ReplayBuffer is not a dict)
        assert buf[key].shape[0] >= buf.n_steps  # never shorter than episode_ends
    n = buf.n_episodes
    buf = ReplayBuffer.open(path, mode="a")
    buf.add_episode(extra)
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes == n + 1 and buf.uncommitted_steps == 0
    assert_episode_equal(buf.get_episode(-1), extra)
    assert not list(path.rglob("*.partial"))


def test_every_interruption_point_of_an_append_leaves_a_consistent_store(tmp_path, monkeypatch):
    """Stop the writer after k store operations for every k an append makes (in-process, deterministic)."""
    template = tmp_path / "template.zarr"
    committed = [make_episode(i, n) for i, n in enumerate([5, 6, 4])]
    buf = ReplayBuffer.create(template)
    for ep in committed:
        buf.add_episode(ep)
    victim, extra = make_episode(10, 5), make_episode(11, 3)

    ops = {"n": 0, "limit": None}
    real_set, real_delete = DurableLocalStore._set, DurableLocalStore.delete

    async def counting_set(self, key, value, exclusive=False):
        ops["n"] += 1
        if ops["limit"] is not None and ops["n"] > ops["limit"]:
            raise _Crash(key)
        return await real_set(self, key, value, exclusive)

    async def counting_delete(self, key):
        ops["n"] += 1
        if ops["limit"] is not None and ops["n"] > ops["limit"]:
            raise _Crash(key)
        return await real_delete(self, key)

    monkeypatch.setattr(DurableLocalStore, "_set", counting_set)
    monkeypatch.setattr(DurableLocalStore, "delete", counting_delete)

    probe = tmp_path / "probe.zarr"
    shutil.copytree(template, probe)
    ReplayBuffer.open(probe, mode="a").add_episode(victim)
    total = ops["n"]
    assert total >= 9  # 3 arrays × (resize + chunks) + the two-step commit

    for limit in range(total + 1):
        path = tmp_path / f"crash{limit}.zarr"
        shutil.copytree(template, path)
        buf = ReplayBuffer.open(path, mode="a")
        ops.update(n=0, limit=limit)
        try:
            buf.add_episode(victim)
            crashed = False
        except _Crash:
            crashed = True
        ops["limit"] = None
        assert crashed == (limit < total), limit
        _check_after_crash(path, committed, extra)


def test_a_tail_from_an_interrupted_append_is_reported_then_discarded(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    committed = [make_episode(i, 4) for i in range(2)]
    buf = ReplayBuffer.create(path)
    for ep in committed:
        buf.add_episode(ep)
    real_resize = type(buf["state"]).resize
    calls = {"n": 0}

    def resize_then_die(self, shape):
        real_resize(self, shape)
        calls["n"] += 1
        if calls["n"] == 3 and shape[0] > 8:  # every data array grown, nothing committed
            raise _Crash("after data resize")

    monkeypatch.setattr(type(buf["state"]), "resize", resize_then_die)
    with pytest.raises(_Crash):
        buf.add_episode(make_episode(5, 6))
    monkeypatch.undo()
    again = ReplayBuffer.open(path)
    assert again.n_episodes == 2 and again.uncommitted_steps == 6
    _check_after_crash(path, committed, make_episode(6, 2))


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rtdp.datasets import ReplayBuffer
    from rtdp.datasets.replay_buffer import DurableLocalStore

    path, mode, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writes = {"n": 0, "armed": False}
    real_set = DurableLocalStore._set

    async def announcing_set(self, key, value, exclusive=False):
        if writes["armed"]:
            writes["n"] += 1
            if writes["n"] == pause_at:  # tell the parent where we are, then keep writing slowly
                print("mid", key, flush=True)
                time.sleep(30)
        return await real_set(self, key, value, exclusive)

    DurableLocalStore._set = announcing_set
    buf = ReplayBuffer.create(path) if mode == "create" else ReplayBuffer.open(path, mode="a")
    for i in range(100):
        rng = np.random.default_rng(i)
        n = 30 + i
        ep = {"img": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              "state": rng.normal(size=(n, 5)).astype(np.float32)}
        writes["armed"] = i == 3
        buf.add_episode(ep)
        print("committed", i, flush=True)
""")


def _episode(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    n = 30 + i
    return {"img": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 5)).astype(np.float32)}


def _run_writer_and_kill(path: Path, pause_at: int) -> str:
    """Start the writer, wait until it is inside episode 3's append at store write `pause_at`, SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "create", str(pause_at)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("mid"):
                break
        assert lines[:3] == ["committed 0", "committed 1", "committed 2"], lines
        assert lines[-1].startswith("mid"), lines
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        return lines[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Episode 3's store writes, in order: img zarr.json (1), 33 img frame chunks (2-34), state zarr.json (35),
# state chunk (36), the checksums: img (37-38), state (39-40), the episode's (41-42), then episode_ends
# zarr.json (43, the shape of the commit), episode_ends chunk (44, its value).
@pytest.mark.parametrize("pause_at,key", [(1, "data/img/zarr.json"), (20, "data/img/c/"),
                                          (36, "data/state/c/"), (38, "meta/chunk_checksums/img/c/"),
                                          (41, "meta/episode_checksums/zarr.json"),
                                          (43, "meta/episode_ends/zarr.json"), (44, "meta/episode_ends/c/")])
def test_sigkill_mid_episode_keeps_earlier_episodes_and_appending_continues(tmp_path, pause_at, key):
    """A real writer process is SIGKILLed while it appends episode 3, just before its `pause_at`-th write."""
    path = tmp_path / "killed.zarr"
    where = _run_writer_and_kill(path, pause_at)
    assert where.split()[1].startswith(key), where
    committed = [_episode(i) for i in range(3)]
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes == 3, where
    for i, ep in enumerate(committed):
        assert_episode_equal(buf.get_episode(i), ep)
    _check_after_crash(path, committed, _episode(50))


def test_a_crashed_first_episode_does_not_fix_the_keys_of_the_store(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    buf = ReplayBuffer.create(path)
    real_set = DurableLocalStore._set

    async def die_on_commit(self, key, value, exclusive=False):
        if key.startswith("meta/episode_ends"):
            raise _Crash(key)
        return await real_set(self, key, value, exclusive)

    monkeypatch.setattr(DurableLocalStore, "_set", die_on_commit)
    with pytest.raises(_Crash):
        buf.add_episode(make_episode(0, 4))
    monkeypatch.undo()
    again = ReplayBuffer.open(path, mode="a")
    assert again.n_episodes == 0 and again.uncommitted_steps == 4
    other = {"joint": np.ones((3, 7), np.float64)}  # different keys: nothing was committed, so allowed
    again.add_episode(other)
    final = ReplayBuffer.open(path)
    assert final.keys() == ["joint"] and final.n_steps == 3
    assert_episode_equal(final.get_episode(0), other)


def test_a_write_error_is_reported_and_the_next_append_in_the_same_process_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "b.zarr"
    buf = ReplayBuffer.create(path)
    first = make_episode(0, 5)
    buf.add_episode(first)
    real_set = DurableLocalStore._set

    async def disk_full(self, key, value, exclusive=False):
        if key.startswith("data/state/c"):
            raise OSError(28, "No space left on device")
        return await real_set(self, key, value, exclusive)

    monkeypatch.setattr(DurableLocalStore, "_set", disk_full)
    with pytest.raises(ReplayBufferError, match=r"b.zarr: cannot write episode 1 \(OSError"):
        buf.add_episode(make_episode(1, 7))
    monkeypatch.undo()
    assert buf.n_episodes == 1 and ReplayBuffer.open(path).uncommitted_steps == 7
    second = make_episode(2, 3)
    buf.add_episode(second)
    again = ReplayBuffer.open(path)
    assert again.n_episodes == 2 and again.uncommitted_steps == 0
    assert_episode_equal(again.get_episode(1), second)
