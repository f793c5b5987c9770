"""LeRobot's diffusion policies inside rtdp: `checkpoint=lerobot:PATH` loads a `DiffusionPolicy` saved by
LeRobot's `save_pretrained` (config.json, model.safetensors and its pre-processor's normalisation stats) as an
rtdp `DiffusionPolicy`.

LeRobot's own modules do the network work: its U-Net is the denoiser and its observation encoder (state,
cameras through its ResNet, environment state) makes the conditioning, so the weights run unchanged. rtdp
supplies the rest: the normaliser (the pre-processor's stats, with LeRobot's formulas), the noise schedule (the
same DDPM), the samplers (DDPM, DDIM, RTI, RTC, anything that gives one level per sample), the backends, the
evaluator and the control loop. Streaming (SDP) needs a level per action position, which LeRobot's U-Net was
not trained for, and is refused with that reason.

Observation keys: each LeRobot input feature reads the rtdp observation key `lerobot.obs` maps to it; by
default `observation.state` reads `state`, `observation.environment_state` `environment_state`,
`observation.image` `image` and `observation.images.<cam>` `<cam>`. For PushT keypoints pass
`lerobot.obs.agent_pos=observation.state lerobot.obs.keypoint=observation.environment_state`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from rtdp.datasets.lerobot_io import from_lerobot_key
from rtdp.normalizer import Normalizer
from rtdp.policy.denoiser import Denoiser, DenoiserSpec
from rtdp.policy.loading import CheckpointError, apply_overrides, serve_policy

PREFIX = "lerobot:"
PREPROCESSOR = "policy_preprocessor.json"
OBS_OVERRIDE = "lerobot.obs."  # lerobot.obs.<rtdp key>=<LeRobot feature>
OBS_IMAGES = "observation.images"  # the stacked cameras LeRobot's encoder reads
_NORM_MODES = {"MIN_MAX": "minmax", "MEAN_STD": "meanstd", "IDENTITY": "identity"}


def is_lerobot_path(path: str | Path) -> bool:
    """Whether a checkpoint argument names a LeRobot checkpoint (`lerobot:PATH`)."""
    return str(path).startswith(PREFIX)


def resolve_pretrained(path: str | Path) -> Path:
    """The directory holding a LeRobot `config.json` + `model.safetensors`: the path itself, or the
    `pretrained_model` of a `lerobot-train` output (`checkpoints/last/pretrained_model`)."""
    path = Path(str(path).removeprefix(PREFIX))
    for candidate in (path, path / "pretrained_model", path / "checkpoints" / "last" / "pretrained_model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"LeRobot checkpoint {str(path)!r} does not exist; pass the directory LeRobot's "
                              "save_pretrained wrote (config.json, model.safetensors)")
    raise CheckpointError(f"{str(path)!r} holds no LeRobot policy (no config.json + model.safetensors in it or its "
                          "pretrained_model/); pass the directory LeRobot's save_pretrained wrote")


class LeRobotObservationEncoder(nn.Module):
    """rtdp observation windows `{key: [B, To, ...]}` (normalised) -> LeRobot's conditioning `[B, To, D]`.

    The conditioning is LeRobot's own (`DiffusionModel._prepare_global_conditioning`, run on this module, which
    holds the config and camera encoders it reads), reshaped per frame: LeRobot concatenates each frame's
    features and flattens the window, so `[B, To * D]` is exactly `[B, To, D]` flattened.
    """

    def __init__(self, config: Any, rgb_encoder: nn.Module | None, feature_keys: Mapping[str, str]):
        super().__init__()
        self.config = config
        if rgb_encoder is not None:
            self.rgb_encoder = rgb_encoder
        self.feature_keys = dict(feature_keys)  # LeRobot feature -> rtdp observation key
        self.obs_shapes = {self.feature_keys[name]: tuple(int(d) for d in ft.shape)
                           for name, ft in config.input_features.items()}
        encoders = list(rgb_encoder) if isinstance(rgb_encoder, nn.ModuleList) else [rgb_encoder] * len(
            config.image_features)
        env = config.env_state_feature
        self.out_dim = (int(config.robot_state_feature.shape[0]) + sum(int(e.feature_dim) for e in encoders)
                        + (int(env.shape[0]) if env else 0))  # per frame, as LeRobot sizes its U-Net's conditioning

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionModel

        batch = {name: obs[key] for name, key in self.feature_keys.items()}
        if self.config.image_features:
            batch[OBS_IMAGES] = torch.stack([batch[k] for k in self.config.image_features], dim=-4)
        cond = DiffusionModel._prepare_global_conditioning(self, batch)
        first = next(iter(batch.values()))
        return cond.view(first.shape[0], first.shape[1], -1)


class LeRobotUnet(Denoiser):
    """LeRobot's `DiffusionConditionalUnet1d` under the `Denoiser` contract: one diffusion step per sample.

    It sets no registry `name`: it wraps the U-Net of a loaded LeRobot checkpoint and is not a
    `policy.denoiser.type` that rtdp trains (`rtdp train` lists only the denoisers it can build)."""

    block_cache_refusal = "LeRobot's U-Net has no transformer blocks to cache; block caching serves policy=transformer"
    per_position_levels = False

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, level: Tensor, cond: Tensor) -> Tensor:
        level = torch.as_tensor(level, device=x.device)
        if level.ndim == 2:  # per position (what the exported graphs take): LeRobot's U-Net needs one per sample
            if not torch.compiler.is_compiling() and bool((level != level[:, :1]).any()):
                raise ValueError("LeRobot's U-Net takes one diffusion step per sample, not one per action position "
                                 "(streaming, sampler=sdp): train an rtdp policy with policy=sdp_unet for that")
            level = level[:, 0]
        timestep = level.round().long().expand(x.shape[0]) if level.ndim <= 1 else level
        return self.unet(x, timestep, global_cond=cond.reshape(x.shape[0], -1))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], spec: DenoiserSpec) -> LeRobotUnet:
        """Refused: the U-Net comes with its weights from a LeRobot checkpoint (`load_lerobot_policy`)."""
        raise TypeError("LeRobot's U-Net is loaded with its checkpoint (checkpoint=lerobot:PATH), not built from an "
                        "rtdp config; to train a U-Net in rtdp use policy=unet1d")


def lerobot_normalizer(pretrained: Path, config: Any, feature_keys: Mapping[str, str], action_key: str
                       ) -> Normalizer:
    """rtdp's normaliser from the stats of the pre-processor saved beside the policy, with LeRobot's maps:
    MIN_MAX `2 (x - min) / (max - min) - 1`, MEAN_STD `(x - mean) / (std + eps)`."""
    if not (pretrained / PREPROCESSOR).is_file():
        raise CheckpointError(f"{pretrained} has no {PREPROCESSOR}: the normalisation stats live in the policy's "
                              "pre-processor; save it beside the policy (preprocessor.save_pretrained(same dir), as "
                              "lerobot-train does)")
    from lerobot.processor import NormalizerProcessorStep, PolicyProcessorPipeline

    pipeline = PolicyProcessorPipeline.from_pretrained(str(pretrained), config_filename=PREPROCESSOR,
                                                       local_files_only=True)
    steps = [s for s in pipeline.steps if isinstance(s, NormalizerProcessorStep)]
    if not steps:
        raise CheckpointError(f"{pretrained / PREPROCESSOR} has no normalizer step; rtdp cannot tell how the "
                              "policy's inputs were scaled")
    step = steps[0]
    norm = Normalizer()
    names = {**feature_keys, "action": action_key}
    for name, key in names.items():
        feature = step.features.get(name)
        mode = step.norm_map.get(feature.type).value if feature is not None and feature.type in step.norm_map \
            else "IDENTITY"
        stats = {k: np.asarray(v, np.float64) for k, v in (step.stats or {}).get(name, {}).items()}
        if mode not in _NORM_MODES:
            raise CheckpointError(f"{name}: LeRobot normalisation {mode} is not supported by rtdp (MIN_MAX, MEAN_STD, "
                                  "IDENTITY are)")
        if mode == "IDENTITY" or not stats:
            norm.add(key, np.zeros((1,)), "identity")
            continue
        shape = (-1, 1, 1) if len(feature.shape) == 3 else tuple(feature.shape)
        if mode == "MIN_MAX":
            lo, hi = stats["min"].reshape(shape), stats["max"].reshape(shape)
            span = np.where(hi - lo == 0, step.eps, hi - lo)
            scale, offset = 2.0 / span, -1.0 - 2.0 * lo / span
            mean, std = stats.get("mean", (lo + hi) / 2).reshape(shape), stats.get("std", span / 2).reshape(shape)
        else:
            mean, std = stats["mean"].reshape(shape), stats["std"].reshape(shape)
            scale, offset = 1.0 / (std + step.eps), -mean / (std + step.eps)
            lo, hi = stats.get("min", mean - std).reshape(shape), stats.get("max", mean + std).reshape(shape)
        norm.add_affine(key, _NORM_MODES[mode], scale=scale, offset=offset, min=lo, max=hi, mean=mean, std=std)
    return norm


def observation_keys(config: Any, overrides: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The rtdp observation key each LeRobot input feature reads (defaults, then `lerobot.obs.<key>=<feature>`
    overrides), and the other overrides."""
    keys = {name: from_lerobot_key(name) for name in config.input_features}
    rest = []
    for override in overrides:
        head, sep, feature = str(override).lstrip("+").partition("=")
        if not head.startswith(OBS_OVERRIDE):
            rest.append(override)
            continue
        key = head[len(OBS_OVERRIDE):]
        if not sep or not key or "." in key or feature not in config.input_features:
            raise CheckpointError(f"{override!r}: write lerobot.obs.<rtdp key>=<LeRobot feature>, the feature one of "
                                  f"the policy's inputs {sorted(config.input_features)}")
        keys[feature] = key
    taken = [k for k in set(keys.values()) if list(keys.values()).count(k) > 1]
    if taken:
        raise CheckpointError(f"rtdp key(s) {sorted(taken)} would feed several LeRobot inputs ({keys}); map each "
                              "input to its own key with lerobot.obs.<key>=<feature>")
    return keys, rest


def lerobot_config(config: Any, pretrained: Path, feature_keys: Mapping[str, str]) -> DictConfig:
    """The rtdp config of a LeRobot checkpoint: its policy shapes, a sampler as LeRobot samples (its scheduler
    and inference steps) and the observation-key map; overrides apply to it as to an rtdp checkpoint's."""
    steps = config.num_inference_steps or config.num_train_timesteps
    sampler = ({"name": "ddpm", "num_steps": steps} if config.noise_scheduler_type == "DDPM"
               else {"name": "ddim", "num_steps": steps, "eta": 0.0})
    sampler["n_action_steps"] = int(config.n_action_steps)
    return OmegaConf.create({
        "policy": {"name": "lerobot_diffusion", "horizon": int(config.horizon), "n_obs_steps": int(config.n_obs_steps)},
        "sampler": sampler,
        "task": {"name": "lerobot", "env": {}, "fps": 10},
        "lerobot": {"path": str(pretrained), "obs": {key: name for name, key in feature_keys.items()}},
        "device": "cpu",
    })


def _schedule(config: Any):
    from rtdp.policy.schedules import make_schedule

    return make_schedule({"name": "ddpm", "num_train_steps": int(config.num_train_timesteps),
                          "beta_schedule": config.beta_schedule, "beta_start": float(config.beta_start),
                          "beta_end": float(config.beta_end), "prediction_type": config.prediction_type,
                          "clip_sample": bool(config.clip_sample), "clip_range": float(config.clip_sample_range)})


def load_lerobot_policy(path: str | Path, overrides: Iterable[str] = (), device: str | torch.device | None = None,
                        backend: str = "auto", backend_options: Mapping[str, Any] | None = None,
                        cache: str | Path | None = None):
    """The LeRobot diffusion policy at `path` (`lerobot:` prefix optional) as an rtdp policy, with rtdp
    overrides (`sampler=ddim sampler.num_steps=10`, `lerobot.obs.<key>=<feature>`, `task.fps=10`) applied."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy

    from rtdp.policy.policy import DiffusionPolicy
    from rtdp.policy.samplers import make_sampler
    from rtdp.policy.spec import PolicySpec

    pretrained = resolve_pretrained(path)
    kind = json.loads((pretrained / "config.json").read_text()).get("type")
    if kind != "diffusion":
        raise CheckpointError(f"{pretrained} holds a LeRobot {kind!r} policy; rtdp runs LeRobot's diffusion policies")
    config = DiffusionConfig.from_pretrained(str(pretrained), local_files_only=True)
    config.pretrained_backbone_weights = None  # the checkpoint holds the backbone; nothing is downloaded
    config.compile_model = False  # rtdp's backends compile
    config.device = "cpu"
    with contextlib.redirect_stdout(io.StringIO()):  # LeRobot prints where it loads from; stdout is the caller's
        lerobot = LeRobotDiffusionPolicy.from_pretrained(str(pretrained), config=config, strict=True,
                                                         local_files_only=True)
    feature_keys, overrides = observation_keys(config, overrides)
    cfg = apply_overrides(lerobot_config(config, pretrained, feature_keys), overrides)
    action_dim = int(config.action_feature.shape[0])
    model = lerobot.diffusion
    encoder = LeRobotObservationEncoder(config, getattr(model, "rgb_encoder", None), feature_keys)
    denoiser = LeRobotUnet(model.unet)
    normalizer = lerobot_normalizer(pretrained, config, feature_keys, "action")
    schedule = _schedule(config)
    horizon, n_obs = int(config.horizon), int(config.n_obs_steps)
    spec = PolicySpec(schedule, horizon=horizon, n_obs_steps=n_obs, action_dim=action_dim, normalizer=normalizer)
    sampler_cfg = OmegaConf.to_container(cfg.sampler, resolve=True)
    if sampler_cfg.get("name") == "sdp":
        raise CheckpointError("sampler=sdp needs a model trained with streaming levels (one per action position); "
                              "LeRobot's DiffusionPolicy is trained with one per sample: retrain with "
                              "`rtdp train policy=sdp_unet`, or use sampler=ddim, ddpm, rti or rtc")
    policy = DiffusionPolicy(encoder, denoiser, schedule, make_sampler(sampler_cfg, spec), normalizer,
                             action_dim=action_dim, horizon=horizon, n_obs_steps=n_obs,
                             fps=float(cfg.task.get("fps", 10)))
    return serve_policy(policy, cfg, pretrained, device or "cpu", backend, backend_options, cache,
                        backend_dir=pretrained / "rtdp_backends")
