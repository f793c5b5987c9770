"""LeRobot's DiffusionPolicy inside rtdp (`checkpoint=lerobot:PATH`): a policy trained for a few steps with
LeRobot's own code, saved with `save_pretrained`, gives the same actions through rtdp as through LeRobot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot")

from rtdp.policy.loading import CheckpointError, load_policy

STATE, ENV, ACT = 2, 18, 2
IMAGE = (3, 96, 96)  # CHW, as LeRobot's features give it (rtdp's envs give HWC uint8); 84 crop: a 3x3 feature map
KEYS = ["lerobot.obs.agent_pos=observation.state", "lerobot.obs.keypoint=observation.environment_state"]


def _stats(gen: torch.Generator, image: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per-feature stats of a synthetic dataset, in LeRobot's layout (min/max/mean/std per dimension; per channel
    `[C, 1, 1]` for a camera)."""
    out = {}
    if image:
        mean, std = 0.3 + 0.4 * torch.rand(3, 1, 1, generator=gen), 0.1 + 0.2 * torch.rand(3, 1, 1, generator=gen)
        out["observation.image"] = {"min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1), "mean": mean, "std": std}
    for name, dim, lo, hi in (("observation.state", STATE, 0.0, 512.0), ("observation.environment_state", ENV, 0.0, 512.0),
                              ("action", ACT, 10.0, 500.0)):
        low = lo + torch.rand(dim, generator=gen) * 20
        high = hi - torch.rand(dim, generator=gen) * 20
        out[name] = {"min": low, "max": high, "mean": (low + high) / 2, "std": (high - low) / 4}
    return out


def save_tiny_lerobot(out: Path, scheduler: str = "DDPM", steps: int = 3, image: bool = False) -> dict:
    """Train LeRobot's DiffusionPolicy for `steps` updates on random normalised batches and save it with its
    pre- and post-processors, as lerobot-train does; returns the stats it was saved with. `image` adds a camera
    (`observation.image`, LeRobot's ResNet-18 encoder with GroupNorm and a center crop at inference)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (STATE,)),
              "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV,))}
    camera = {"crop_shape": (84, 84), "use_group_norm": True} if image else {}
    if image:
        inputs["observation.image"] = PolicyFeature(FeatureType.VISUAL, IMAGE)
    cfg = DiffusionConfig(
        input_features=inputs, **camera,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACT,))},
        horizon=16, n_obs_steps=2, n_action_steps=8, down_dims=(16, 32), diffusion_step_embed_dim=16,
        pretrained_backbone_weights=None, noise_scheduler_type=scheduler, num_train_timesteps=20,
        num_inference_steps=None if scheduler == "DDPM" else 5, device="cpu", push_to_hub=False)
    policy = DiffusionPolicy(cfg).train()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = {"observation.state": torch.randn(8, 2, STATE, generator=gen),
                 "observation.environment_state": torch.randn(8, 2, ENV, generator=gen),
                 "action": torch.randn(8, 16, ACT, generator=gen).clamp(-1, 1),
                 "action_is_pad": torch.zeros(8, 16, dtype=torch.bool)}
        if image:
            batch["observation.image"] = torch.randn(8, 2, *IMAGE, generator=gen)
        loss, _ = policy.forward(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    stats = _stats(gen, image)
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return stats


@pytest.fixture(scope="module")
def lerobot_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "pretrained_model"
    save_tiny_lerobot(out)
    return out


def _frames(seed: int, n: int = 2, image: bool = False) -> list[dict[str, np.ndarray]]:
    """Raw frames as rtdp's envs give them (a camera as HWC uint8)."""
    rng = np.random.default_rng(seed)
    frames = [{"agent_pos": rng.uniform(50, 450, STATE).astype(np.float32),
               "keypoint": rng.uniform(50, 450, ENV).astype(np.float32)} for _ in range(n)]
    for frame in frames if image else []:
        frame["image"] = rng.integers(0, 256, (*IMAGE[1:], IMAGE[0]), dtype=np.uint8)
    return frames


def _lerobot_actions(path: Path, frame: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The first plan's executed actions through LeRobot's own pipeline: pre-processor, `select_action` once
    per action (the first call plans the chunk), post-processor."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    policy = DiffusionPolicy.from_pretrained(str(path)).eval()
    pre = PolicyProcessorPipeline.from_pretrained(str(path), config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(str(path), config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    policy.reset()
    raw = {"observation.state": torch.from_numpy(frame["agent_pos"]),
           "observation.environment_state": torch.from_numpy(frame["keypoint"])}
    if "image" in frame:  # LeRobot's env wrapper: HWC uint8 -> CHW float in [0, 1]
        raw["observation.image"] = torch.from_numpy(frame["image"]).permute(2, 0, 1).float() / 255.0
    obs = pre(raw)
    torch.manual_seed(seed)
    actions = [post(policy.select_action(dict(obs))) for _ in range(policy.config.n_action_steps)]
    return torch.cat(actions).numpy()


def _rtdp_chunk(policy, frame: dict[str, np.ndarray], seed: int):
    """rtdp's first plan on the window LeRobot's queue makes of one frame (the frame twice)."""
    obs = {k: np.stack([v, v])[None] for k, v in frame.items()}
    policy.reset()
    torch.manual_seed(seed)
    return policy.act(obs)


def test_lerobot_checkpoint_gives_lerobots_actions_through_rtdp_ddpm(lerobot_dir):
    policy = load_policy(f"lerobot:{lerobot_dir}", KEYS)
    assert policy.sampler.name == "ddpm" and policy.sampler.num_steps == 20
    for seed in (0, 1):
        frame = _frames(seed)[0]
        chunk = _rtdp_chunk(policy, frame, seed)
        ours = chunk.actions[0, chunk.start : chunk.start + chunk.n_exec]
        theirs = _lerobot_actions(lerobot_dir, frame, seed)
        assert chunk.nfe == 20 and ours.shape == theirs.shape == (8, ACT)
        np.testing.assert_allclose(ours, theirs, atol=5e-4, rtol=1e-6)  # pixels; float32 sums in another order


def test_lerobot_image_checkpoint_gives_lerobots_actions_through_rtdp(tmp_path):
    """A camera policy: rtdp's HWC uint8 frames reach LeRobot's ResNet encoder as its own pipeline feeds it
    (CHW in [0, 1], normalised per channel), and the actions agree."""
    save_tiny_lerobot(tmp_path / "image", image=True, steps=2)
    policy = load_policy(f"lerobot:{tmp_path / 'image'}", KEYS)
    assert policy.encoder.obs_shapes["image"] == IMAGE
    frame = _frames(11, image=True)[0]
    chunk = _rtdp_chunk(policy, frame, 11)
    ours = chunk.actions[0, chunk.start : chunk.start + chunk.n_exec]
    np.testing.assert_allclose(ours, _lerobot_actions(tmp_path / "image", frame, 11), atol=5e-4, rtol=1e-6)
    # the camera moves the actions by far more than that tolerance, so the agreement covers the image path
    inverted = _rtdp_chunk(policy, {**frame, "image": 255 - frame["image"]}, 11).actions
    assert np.abs(inverted - chunk.actions).max() > 10 * 5e-4


def test_lerobot_checkpoint_actions_change_with_the_noise(lerobot_dir):
    """The equality above is not of constant outputs: another seed moves the actions."""
    policy = load_policy(f"lerobot:{lerobot_dir}", KEYS)
    frame = _frames(0)[0]
    a, b = (_rtdp_chunk(policy, frame, seed).actions for seed in (0, 1))
    assert np.abs(a - b).max() > 1.0


def test_lerobot_ddim_checkpoint_gives_lerobots_actions(tmp_path):
    save_tiny_lerobot(tmp_path / "ddim", scheduler="DDIM")
    policy = load_policy(f"lerobot:{tmp_path / 'ddim'}", KEYS)
    assert policy.sampler.name == "ddim" and policy.sampler.num_steps == 5
    frame = _frames(3)[0]
    chunk = _rtdp_chunk(policy, frame, 3)
    np.testing.assert_allclose(chunk.actions[0, chunk.start : chunk.start + chunk.n_exec],
                               _lerobot_actions(tmp_path / "ddim", frame, 3), atol=5e-4, rtol=1e-6)


@pytest.mark.parametrize("overrides", [["sampler=ddim", "sampler.num_steps=4"], ["sampler=rti", "sampler.steps=[2,1,0]"],
                                       ["sampler=rtc"], ["sampler=rti_renoise"]])
def test_lerobot_checkpoint_runs_rtdps_samplers(lerobot_dir, overrides):
    from rtdp.types import PlanContext

    policy = load_policy(f"lerobot:{lerobot_dir}", KEYS + overrides)
    frames = _frames(5, 3)
    policy.reset()
    for i in range(3):
        obs = {k: np.stack([frames[max(i - 1, 0)][k], frames[i][k]])[None] for k in frames[0]}
        chunk = policy.act(obs, PlanContext(n_executed=None if i == 0 else policy.n_action_steps, delay=0))
        assert chunk.actions.shape == (1, 16, ACT) and np.isfinite(chunk.actions).all()
    # rti_renoise's third plan is warm: re-noised to tau, then its default 2 DDIM steps
    assert chunk.nfe == {"sampler=ddim": 4, "sampler=rti": 3, "sampler=rtc": 10, "sampler=rti_renoise": 2}[overrides[0]]


def test_lerobot_checkpoint_runs_on_the_onnx_backend_with_eager_actions(lerobot_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import shutil

    local = tmp_path / "pretrained_model"  # the graph is cached beside the checkpoint
    shutil.copytree(lerobot_dir, local)
    eager = load_policy(f"lerobot:{local}", [*KEYS, "sampler=ddim", "sampler.num_steps=4"], backend="eager")
    onnx = load_policy(f"lerobot:{local}", [*KEYS, "sampler=ddim", "sampler.num_steps=4"], backend="onnx")
    assert onnx.backend is not None and onnx.backend.name == "onnx"
    frame = _frames(7)[0]
    np.testing.assert_allclose(_rtdp_chunk(onnx, frame, 7).actions, _rtdp_chunk(eager, frame, 7).actions,
                               atol=1e-2, rtol=1e-5)


def test_lerobot_checkpoint_refuses_streaming_with_the_reason(lerobot_dir):
    with pytest.raises(CheckpointError, match="one per action position.*policy=sdp_unet"):
        load_policy(f"lerobot:{lerobot_dir}", [*KEYS, "sampler=sdp"])


def test_lerobot_observation_map_errors_name_the_inputs(lerobot_dir):
    with pytest.raises(CheckpointError, match="would feed several"):
        load_policy(f"lerobot:{lerobot_dir}", ["lerobot.obs.state=observation.environment_state"])
    with pytest.raises(CheckpointError, match=r"observation\.environment_state"):
        load_policy(f"lerobot:{lerobot_dir}", ["lerobot.obs.agent_pos=observation.nope"])


def test_lerobot_checkpoint_without_preprocessor_is_refused(lerobot_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((lerobot_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match="policy_preprocessor.json"):
        load_policy(f"lerobot:{bare}", KEYS)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(f"lerobot:{tmp_path / 'nothing'}", KEYS)
    other = tmp_path / "act"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"type": "act"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="'act' policy"):
        load_policy(f"lerobot:{other}", KEYS)


def test_rtdp_eval_runs_a_lerobot_checkpoint_on_pusht(lerobot_dir, tmp_path):
    pytest.importorskip("gym_pusht")
    from rtdp.cli.main import main

    out = tmp_path / "eval"
    rc = main(["eval", f"checkpoint=lerobot:{lerobot_dir}", "task=pusht", "obs_mode=keypoints", f"out={out}",
               "episodes=2", "n_envs=1", "max_steps=16", "progress=false", "sampler=ddim", "sampler.num_steps=3",
               *KEYS])
    assert rc == 0
    rec = json.loads((out / "eval.json").read_text())
    assert rec["summary"]["n_episodes"] == 2 and rec["summary"]["nfe_per_action"] == pytest.approx(3 / 8)


def test_a_bench_suite_evaluates_a_lerobot_checkpoint_beside_its_task(lerobot_dir, tmp_path, capsys):
    pytest.importorskip("gym_pusht")
    import yaml

    from rtdp.cli.main import main

    results = tmp_path / "results"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "lerobot", "results": str(results), "workers": 1, "rows": [
        {"name": "lerobot_ddim3", "checkpoint": f"lerobot:{lerobot_dir}", "task": "pusht", "obs_mode": "keypoints",
         "overrides": [*KEYS, "sampler=ddim", "sampler.num_steps=3"], "episodes": 2, "n_envs": 1, "max_steps": 16,
         "timing_calls": 2, "seed": 7}]}))
    assert main(["bench", str(suite), "--no-progress"]) == 0, capsys.readouterr()
    row = json.loads((results / "rows" / "lerobot_ddim3.json").read_text())
    assert row["status"] == "done" and row["task"] == "pusht" and row["score"]["n"] == 2
    assert row["nfe_per_action"] == pytest.approx(3 / 8) and row["timing"]["calls"] == 2
    assert "| lerobot_ddim3 |" in (results / "report.md").read_text()


def test_rtdp_run_drives_a_lerobot_checkpoint_in_the_control_loop(lerobot_dir, tmp_path):
    pytest.importorskip("gym_pusht")
    from rtdp.cli.main import main

    out = tmp_path / "run"
    assert main(["run", f"checkpoint=lerobot:{lerobot_dir}", "env=pusht", "obs_mode=keypoints", "hz=10",
                 "max_steps=12", f"out={out}", "sampler=ddim", "sampler.num_steps=2", *KEYS]) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["executed_actions"] == 12 and summary["inference_latency"]["n"] >= 1


def test_rtdp_eval_of_a_lerobot_checkpoint_without_a_task_is_one_line_and_exit_2(lerobot_dir, tmp_path, capsys):
    from rtdp.cli.main import main

    assert main(["eval", f"checkpoint=lerobot:{lerobot_dir}", f"out={tmp_path / 'ev'}", *KEYS]) == 2
    err = capsys.readouterr().err
    assert "give task=ID and obs_mode=" in err and err.count("\n") == 1 and not (tmp_path / "ev").exists()


def test_lerobot_train_output_layouts_resolve_to_their_pretrained_model(lerobot_dir, tmp_path):
    import shutil

    from rtdp.policy.lerobot_policy import resolve_pretrained

    out = tmp_path / "train_out"
    for step in ("005000", "last"):
        shutil.copytree(lerobot_dir, out / "checkpoints" / step / "pretrained_model")
    assert resolve_pretrained(f"lerobot:{out}") == out / "checkpoints" / "last" / "pretrained_model"
    assert resolve_pretrained(out / "checkpoints" / "005000") == out / "checkpoints" / "005000" / "pretrained_model"
    assert resolve_pretrained(lerobot_dir) == lerobot_dir
    with pytest.raises(CheckpointError, match="holds no LeRobot policy"):
        resolve_pretrained(out / "checkpoints")
