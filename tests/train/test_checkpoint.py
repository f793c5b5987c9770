"""Checkpoints: round trip to an identical policy, bit-for-bit resume, atomic writes, clear refusals."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_task import TINY_ARM, compose, tiny_overrides

from rtdp.policy.loading import CheckpointError, load_policy, resolve_checkpoint
from rtdp.policy.samplers import DDPMSampler
from rtdp.train import checkpoint as ckpt_mod
from rtdp.train.trainer import Trainer, _rng_state
from rtdp.types import PlanContext


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A 6-step run with checkpoints at steps 3 and 6 (all kept)."""
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = compose(tiny_overrides(tiny_data, out, "training.num_steps=6", "training.checkpoint_every=3",
                                 "training.keep_checkpoints=0"))
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer, out


def test_checkpoint_is_safetensors_yaml_and_json_only(trained):
    _, out = trained
    ckpt = resolve_checkpoint(out)
    assert ckpt.name == "step_0000006" and (out / "checkpoints" / "step_0000003").is_dir()
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.yaml", "manifest.json", "model.safetensors",
                                                      "normalizer.safetensors", "optimizer.safetensors",
                                                      "train_state.json"]
    weights = load_file(str(ckpt / "model.safetensors"))
    assert any(k.startswith("ema.") for k in weights) and any(k.startswith("model.") for k in weights)
    assert json.loads((ckpt / "train_state.json").read_text())["step"] == 6
    assert not list((out / "checkpoints").glob(".tmp*")) and not list((out / "checkpoints").glob(".old*"))


def test_load_policy_round_trips_the_ema_policy(trained):
    trainer, out = trained
    policy = load_policy(out)
    for (name, a), (_, b) in zip(trainer.ema.averaged.state_dict().items(), policy.state_dict().items()):
        assert torch.equal(a, b), name
    obs = {"state": np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)}
    trainer.ema.averaged.reset()
    expected = trainer.ema.averaged.act(obs, PlanContext(generator=torch.Generator().manual_seed(0)))
    got = policy.act(obs, PlanContext(generator=torch.Generator().manual_seed(0)))
    np.testing.assert_array_equal(expected.actions, got.actions)
    assert got.dt == pytest.approx(1 / 20) and got.start == 1 and got.n_exec == 8


def test_load_policy_applies_sampler_overrides(trained):
    _, out = trained
    policy = load_policy(out, ["sampler=ddpm", "sampler.num_steps=5"])
    assert isinstance(policy.sampler, DDPMSampler) and policy.sampler.num_steps == 5
    chunk = policy.act({"state": np.zeros((1, 2, 4), np.float32)})
    assert chunk.nfe == 5


@pytest.mark.parametrize("override, message", [
    (["sampler.nope=3"], "config key 'sampler.nope' does not exist"),
    (["sampler=fancy"], "no sampler config 'fancy'"),
    (["policy=transformer"], "cannot be loaded as policy=transformer"),
])
def test_load_policy_rejects_bad_overrides_clearly(trained, override, message):
    _, out = trained
    with pytest.raises(CheckpointError, match=message):
        load_policy(out, override)


def test_rti_discrete_dims_outside_the_action_are_refused(trained):
    _, out = trained
    with pytest.raises(ValueError, match=r"sampler.discrete_dims \[5\] out of range for 2 action dimensions"):
        load_policy(out, ["sampler=rti", "sampler.discrete_dims=[5]"])


def test_weights_of_another_policy_type_are_refused(trained, tmp_path):
    _, out = trained
    fake = tmp_path / "fake"
    shutil.copytree(resolve_checkpoint(out), fake)
    text = (fake / "config.yaml").read_text().replace("down_dims:\n    - 16\n    - 32", "down_dims:\n    - 8\n    - 16")
    (fake / "config.yaml").write_text(text)
    (fake / "manifest.json").unlink()  # a hand-edited config would fail its checksum first
    with pytest.raises(CheckpointError, match="another policy type or size"):
        load_policy(fake)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_policy(tmp_path)


def test_resume_continues_bit_for_bit(tiny_data, tmp_path):
    """Stopping after 3 steps and resuming gives the same next-batch losses and weights as not stopping."""
    straight = Trainer(compose(tiny_overrides(tiny_data, tmp_path / "a", "training.num_steps=6")))
    losses_a = [straight.train_step() for _ in range(6)]

    first = Trainer(compose(tiny_overrides(tiny_data, tmp_path / "b", "training.num_steps=6")))
    losses_b = [first.train_step() for _ in range(3)]
    first.save()
    del first
    torch.manual_seed(999)  # the resumed run must not depend on the process's RNG state
    resumed = Trainer(compose(tiny_overrides(tiny_data, tmp_path / "b", "training.num_steps=6", "resume=true")))
    assert resumed.step == 3
    losses_b += [resumed.train_step() for _ in range(3)]
    assert losses_b == losses_a
    for (name, a), (_, b) in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(straight.ema.averaged.state_dict().items(), resumed.ema.averaged.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()


def test_an_existing_run_is_never_overwritten(trained):
    _, out = trained
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="already holds a training run; pass resume=true"):
        Trainer(compose(tiny_overrides(out.parent / "unused", out, "training.num_steps=2")))
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_resuming_with_another_policy_type_is_refused(trained, tiny_data):
    _, out = trained
    with pytest.raises(CheckpointError, match="holds a 'unet1d' policy, not 'transformer'"):
        Trainer(compose(["policy=transformer", *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}",
                         "resume=true", "policy.denoiser.n_layers=1", "policy.denoiser.dim=16", "num_threads=1"]))


def test_a_crash_while_saving_leaves_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    trainer, out = trained
    run = tmp_path / "copy"
    shutil.copytree(out, run, symlinks=True)
    calls = {"n": 0}
    real = ckpt_mod.save_file

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_checkpoint(run, 99, model=trainer.policy, ema_model=trainer.ema.averaged,
                                 normalizer=trainer.normalizer, config=trainer.cfg, data_meta=trainer.meta)
    assert resolve_checkpoint(run).name == "step_0000006"
    assert not (run / "checkpoints" / "step_0000099").exists()
    load_policy(run)  # still loads
    assert os.readlink(run / "checkpoints" / "last") == "step_0000006"


def _copy_run(out, tmp_path, name="copy"):
    run = tmp_path / name
    shutil.copytree(out, run, symlinks=True)
    return run


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "model.safetensors"),
    (lambda p: p.write_bytes(b""), "model.safetensors"),
    (lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]), "model.safetensors"),
    (_flip_middle_byte, "model.safetensors"),
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "normalizer.safetensors"),
    (lambda p: p.write_text("policy: [unclosed\n  - :"), "config.yaml"),
])
@pytest.mark.parametrize("manifest", [True, False])
def test_a_damaged_checkpoint_file_is_refused_in_one_line_naming_it(trained, tmp_path, damage, file, manifest):
    _, out = trained
    run = _copy_run(out, tmp_path)
    ckpt = resolve_checkpoint(run)
    if not manifest:  # written by an older rtdp: no checksums, the readers must still say what is wrong
        (ckpt / "manifest.json").unlink()
        if damage is _flip_middle_byte:
            pytest.skip("flipped tensor bytes are only detectable with the manifest's checksums")
    damage(ckpt / file)
    with pytest.raises(CheckpointError) as err:
        load_policy(run)
    assert file in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage, file", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "optimizer.safetensors"),
    (lambda p: p.write_text("{not json"), "train_state.json"),
])
def test_resuming_from_a_damaged_training_state_is_refused_in_one_line(trained, tiny_data, tmp_path, damage, file):
    _, out = trained
    run = _copy_run(out, tmp_path)
    ckpt = resolve_checkpoint(run)
    (ckpt / "manifest.json").unlink()  # the readers themselves must catch it, not only the checksums
    damage(ckpt / file)
    with pytest.raises(CheckpointError, match=file):
        Trainer(compose(tiny_overrides(tiny_data, run, "training.num_steps=8", "resume=true")))


def test_rtdp_eval_on_a_damaged_checkpoint_is_one_line_and_exit_2(trained, tmp_path, capsys):
    from rtdp.cli.main import main as rtdp_main

    _, out = trained
    run = _copy_run(out, tmp_path)
    _flip_middle_byte(resolve_checkpoint(run) / "model.safetensors")
    assert rtdp_main(["eval", f"checkpoint={run}", "episodes=1", f"out={tmp_path / 'eval'}"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged" in err and err.count("\n") == 1 and not (tmp_path / "eval").exists()


class _Killed(BaseException):
    """Stands for SIGKILL at a point of the checkpoint swap (nothing after it runs)."""


def _kill_at(monkeypatch, func: str, n: int):
    real = getattr(ckpt_mod.os if func == "replace" else ckpt_mod.shutil, func)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise _Killed(f"killed at {func} #{n}")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod.os if func == "replace" else ckpt_mod.shutil, func, dying)


@pytest.mark.parametrize("func, n", [("replace", 1), ("replace", 2), ("replace", 3), ("rmtree", 2)])
def test_a_kill_while_resaving_a_step_leaves_a_complete_last_and_resume_cleans_up(trained, tiny_data, tmp_path,
                                                                                monkeypatch, func, n):
    """Re-saving step 6 (as the final save of a run does): killed after setting the old copy aside, after
    moving the new one in, after relinking `last`, or while deleting the old copy."""
    trainer, out = trained
    run = _copy_run(out, tmp_path)
    _kill_at(monkeypatch, func, n)
    with pytest.raises(_Killed):
        ckpt_mod.save_checkpoint(run, 6, model=trainer.policy, ema_model=trainer.ema.averaged,
                                 normalizer=trainer.normalizer, config=trainer.cfg, data_meta=trainer.meta,
                                 optimizer=trainer.optimizer, lr_scheduler=trainer.lr_scheduler,
                                 rng=_rng_state(trainer.generator), train_state={"ema_step": 6, "elapsed_s": 1.0},
                                 keep=0)
    monkeypatch.undo()
    load_policy(run)  # eval never sees half a checkpoint
    resumed = Trainer(compose(tiny_overrides(tiny_data, run, "training.num_steps=8", "resume=true")))
    assert resumed.step == 6  # the set-aside copy was moved back, or the new one had moved in
    root = run / "checkpoints"
    assert not list(root.glob(".tmp*")) and not list(root.glob(".old*")) and not list(root.glob(".last.*"))
