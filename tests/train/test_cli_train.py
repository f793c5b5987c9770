"""`rtdp train`: a tiny run end to end, and one clear line (exit 2, nothing written) for each bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_task import TINY_ARM, TINY_POLICY

from rtdp.cli.main import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_runs_and_writes_a_loadable_checkpoint(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}",
                       "training.num_steps=3", *TINY_POLICY)
    assert code == 0, err
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (out / "metrics.json").is_file() and list((out / "tb").iterdir())
    from rtdp.policy.loading import load_policy

    assert load_policy(out).n_obs_steps == 2


def test_print_config(capsys):
    code, out, _ = run(capsys, "--cfg", "policy=transformer")
    assert code == 0 and "type: transformer" in out and "pusht_keypoints" in out


@pytest.mark.parametrize("args, message", [
    (["training.lr_typo=1"], "Could not override 'training.lr_typo'"),
    (["policy=unet9"], "Could not find 'policy/unet9' (available: "),
    (["task.dataset.path=/nonexistent/data.zarr"], "dataset '/nonexistent/data.zarr' (task pusht_keypoints) does not exist"),
    (["positional"], "expected key=value overrides"),
    (["device=cuda"], "CUDA is not available; use device=cpu"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, args, message):
    out = tmp_path / "run"
    code, _, err = run(capsys, f"out_dir={out}", *args)
    assert code == 2
    assert err.startswith("rtdp train: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_dataset_keys_that_do_not_match_the_task_are_named(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "task=pusht_keypoints", f"task.dataset.path={tiny_data}", f"out_dir={out}",
                       *TINY_POLICY)
    assert code == 2 and "has no key(s) ['keypoint']" in err and "fix task.obs/task.action" in err
    assert not out.exists()


def test_resume_without_a_run_and_rerun_over_a_run_are_refused(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    base = [*TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}", "training.num_steps=2", *TINY_POLICY]
    code, _, err = run(capsys, *base, "resume=true")
    assert code == 2 and "holds no checkpoint; drop resume=true" in err and not out.exists()
    assert run(capsys, *base)[0] == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    code, _, err = run(capsys, *base)
    assert code == 2 and "already holds a training run" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}", "resume=true",
                       "policy=transformer", "policy.denoiser.n_layers=1", "policy.denoiser.dim=16", "num_threads=1")
    assert code == 2 and "holds a 'unet1d' policy, not 'transformer'" in err


def test_a_fine_tuned_run_starts_from_the_checkpoints_ema_weights_and_normaliser(capsys, tiny_data, tmp_path):
    from rtdp.policy.loading import read_tensors, resolve_checkpoint

    base = [*TINY_ARM, f"task.dataset.path={tiny_data}", *TINY_POLICY]
    assert run(capsys, *base, f"out_dir={tmp_path / 'a'}", "training.num_steps=3")[0] == 0
    # lr=0: one fine-tuning step leaves the weights where init_from put them
    code, _, err = run(capsys, *base, f"out_dir={tmp_path / 'b'}", "training.num_steps=1", "policy.optim.lr=0",
                       f"init_from={tmp_path / 'a'}", "seed=7")
    assert code == 0, err
    fresh = [*base, f"out_dir={tmp_path / 'c'}", "training.num_steps=1", "policy.optim.lr=0", "seed=7"]
    assert run(capsys, *fresh)[0] == 0
    a, b, c = (resolve_checkpoint(tmp_path / n) for n in "abc")
    wa, wb, wc = (read_tensors(p / "model.safetensors") for p in (a, b, c))
    for key, value in wa.items():
        if key.startswith("ema."):
            assert torch.equal(wb[key], value) and torch.equal(wb["model." + key[4:]], value), key
    assert any(not torch.equal(wc[k], v) for k, v in wa.items() if k.startswith("ema."))
    na, nb = (read_tensors(p / "normalizer.safetensors") for p in (a, b))
    assert na.keys() == nb.keys() and all(torch.equal(na[k], nb[k]) for k in na)
    assert json.loads((b / "train_state.json").read_text())["step"] == 1


def test_fine_tuning_from_a_missing_or_other_policy_checkpoint_is_one_line(capsys, tiny_data, tmp_path):
    base = [*TINY_ARM, f"task.dataset.path={tiny_data}", "training.num_steps=2", *TINY_POLICY]
    code, _, err = run(capsys, *base, f"out_dir={tmp_path / 'b'}", f"init_from={tmp_path / 'none'}")
    assert code == 2 and err.startswith("rtdp train: error: init_from: checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
    assert run(capsys, *base, f"out_dir={tmp_path / 'a'}")[0] == 0
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={tmp_path / 'c'}",
                       f"init_from={tmp_path / 'a'}", "policy=transformer", "policy.denoiser.n_layers=1",
                       "policy.denoiser.dim=16", "num_threads=1")
    assert code == 2 and "holds a 'unet1d' policy, not 'transformer'; fine-tune with policy=unet1d" in err
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_a_scaled_gripper_is_trained_at_its_factor_and_the_rti_sampler_snaps_to_it(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}",
                       "training.num_steps=2", "task.action.discrete_dims=[1]", "task.action.discrete_scale=0.1",
                       *TINY_POLICY)
    assert code == 0, err
    import torch

    from rtdp.policy.loading import load_policy

    policy = load_policy(out, ["sampler=rti", "sampler.discrete_dims=[1]"])
    lo, hi = policy.sampler.discrete_levels
    assert torch.allclose(lo, torch.tensor([-0.1])) and torch.allclose(hi, torch.tensor([0.1]))
    hi_raw = torch.as_tensor(policy.normalizer.stats("action")["max"])
    assert torch.isclose(policy.normalizer.normalize("action", hi_raw)[1], torch.tensor(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scaled: no warning
        assert load_policy(out, ["sampler=rti"]).sampler.discrete_dims == [1]  # the task's, by default
    assert load_policy(out, ["sampler=rti", "sampler.discrete_dims=[]"]).sampler.discrete_levels is None


@pytest.mark.parametrize("args, message", [
    (["task.action.discrete_dims=[1]", "task.action.discrete_scale=0"], "the scale factor must be > 0"),
    (["task.action.discrete_scale=big"], "action.discrete_scale must be a number > 0"),
    (["task.action.discrete_dims=[7]", "task.action.discrete_scale=0.1"], "dimension(s) [7] out of range"),
    (["task.action.discrete_dims=[]", "task.action.discrete_scale=0.1"], "needs action.discrete_dims"),
])
def test_bad_discrete_action_settings_are_one_line(capsys, tiny_data, tmp_path, args, message):
    out = tmp_path / "run"
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}",
                       "training.num_steps=1", *TINY_POLICY, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_rti_on_a_gripper_trained_at_plus_minus_one_warns_that_a_warm_start_cannot_flip_it(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, *TINY_ARM, f"task.dataset.path={tiny_data}", f"out_dir={out}", "training.num_steps=1",
                       "task.action.discrete_dims=[1]", *TINY_POLICY)
    assert code == 0, err
    from rtdp.policy.loading import load_policy

    for sampler in ("rti", "rti_renoise"):
        with pytest.warns(UserWarning, match=r"discrete_dims \[1\] are carried at ±1 .* task.action.discrete_scale=0.5"):
            load_policy(out, [f"sampler={sampler}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_policy(out, ["sampler=rti_renoise", "sampler.discrete_mode=reinit"])
        load_policy(out, ["sampler=rti", "sampler.discrete=clip", "sampler.clip_factor=10"])
        load_policy(out, ["sampler=ddim"])
