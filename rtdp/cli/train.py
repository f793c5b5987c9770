"""`rtdp train policy=<name> task=<name> [key=value ...]`: compose the hydra config and train.

Multi-process: `torchrun --nproc_per_node 2 -m rtdp.cli.main train ...` (DDP; gloo on CPU, nccl on GPU).
Examples:
    rtdp train task=pusht_keypoints training.num_steps=20000
    rtdp train policy=transformer task=pusht_image device=cuda
    rtdp train out_dir=runs/train/pusht_keypoints_unet1d resume=true
    rtdp train task.dataset.path=robot_demos.zarr init_from=runs/train/arm_lift_sdp_unet   # fine-tune
"""

from __future__ import annotations

import sys

from rtdp.cli.args import Key, check_values
from rtdp.cli.main import CLIError

# The composed config's user-settable values, checked before anything is built or written.
CONFIG_KEYS = {
    "seed": Key("int", min=0), "num_threads": Key("int", min=1), "resume": Key("bool"),
    "training.batch_size": Key("int", min=1), "training.num_steps": Key("int", min=1),
    "training.max_minutes": Key("float", min=0.01), "training.grad_clip": Key("float", min=0.0),
    "training.warmup_steps": Key("int", min=0), "training.val_ratio": Key("float", min=0.0, max=0.95),
    "training.val_every": Key("int", min=0), "training.val_batches": Key("int", min=1),
    "training.log_every": Key("int", min=1), "training.checkpoint_every": Key("int", min=0),
    "training.checkpoint_every_minutes": Key("float", min=0.01), "training.keep_checkpoints": Key("int", min=0),
    "eval.every_steps": Key("int", min=0), "eval.every_minutes": Key("float", min=0.01),
    "eval.episodes": Key("int", min=1), "eval.final_episodes": Key("int", min=0), "eval.n_envs": Key("int", min=1),
    "eval.seed": Key("int", min=0), "policy.optim.lr": Key("float", min=0.0), "policy.horizon": Key("int", min=1),
    "policy.n_obs_steps": Key("int", min=1), "policy.denoiser.num_experts": Key("int", min=1),
    "policy.denoiser.top_k": Key("int", min=1),
}


def check_config(cfg) -> None:
    """Refuse a composed config with a value of the wrong type or range, or an out_dir that is a file."""
    from pathlib import Path

    from omegaconf import OmegaConf

    values = {name: OmegaConf.select(cfg, name, default=None) for name in CONFIG_KEYS}
    check_values({k: v for k, v in values.items() if v is not None}, CONFIG_KEYS)
    experts, top_k = values["policy.denoiser.num_experts"], values["policy.denoiser.top_k"]
    if experts is not None and top_k is not None and int(experts) < int(top_k):
        from rtdp.policy.moe import check_routing

        try:
            check_routing(experts, top_k)
        except ValueError as err:
            raise CLIError(str(err)) from None
    memory = OmegaConf.select(cfg, "training.data_in_memory", default="auto")
    if memory not in (True, False, "auto"):
        raise CLIError(f"training.data_in_memory={memory!r} is not valid: use true, false or auto")
    init = OmegaConf.select(cfg, "init_from", default=None)
    if init is not None:
        from rtdp.policy.loading import CheckpointError, resolve_checkpoint

        try:
            resolve_checkpoint(str(init))
        except CheckpointError as err:
            raise CLIError(f"init_from: {err}") from None
    out = Path(str(cfg.out_dir))
    if out.exists() and not out.is_dir():
        raise CLIError(f"out_dir={out} is a file; give a directory for the run's checkpoints and logs")


def help_text() -> str:
    """The docstring plus what can be chosen, read off the config folders and the registries."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from rtdp.policy.denoiser import DENOISERS, load_builtin_denoisers
    from rtdp.policy.levels import LEVEL_SAMPLERS
    from rtdp.policy.samplers import SAMPLERS
    from rtdp.policy.schedules import SCHEDULES

    load_builtin_denoisers()  # the built-in denoisers register when their modules are imported
    configs = Path(__file__).resolve().parents[1] / "configs"
    group = lambda name: ", ".join(sorted(p.stem for p in (configs / name).glob("*.yaml")))
    top = OmegaConf.load(configs / "train.yaml")
    keys = ", ".join(k for k in top if k != "defaults")
    return "\n".join([
        __doc__.strip(),
        "",
        f"config groups: policy ({group('policy')}); task ({group('task')}); sampler ({group('sampler')})",
        (f"registered: denoisers (policy.denoiser.type) {', '.join(DENOISERS)}; schedules (policy.schedule.name) "
        f"{', '.join(SCHEDULES)}; training levels (policy.levels.name) {', '.join(LEVEL_SAMPLERS)}; samplers "
        f"(sampler.name) {', '.join(SAMPLERS)}"),
        f"top-level keys: {keys}; training.* and eval.* as in rtdp/configs/train.yaml",
        "`--cfg` prints the composed config and exits."])


def compose_config(overrides: list[str]):
    """The composed `train.yaml` with `overrides`, or a CLIError naming the bad key/group and what to do."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("rtdp.configs", version_base=None):
            return compose("train", overrides=overrides)
    except MissingConfigException as err:
        first = str(err).strip().split("Config search path")[0].splitlines()
        options = [line.strip() for line in first[1:] if line.startswith("\t")]
        raise CLIError(f"{first[0]} (available: {', '.join(options)})" if options else first[0]) from None
    except ConfigCompositionException as err:
        msg = " ".join(str(err).split())
        cause = err.__cause__
        if cause is not None and "Could not override" not in msg:
            msg = f"{msg}: {' '.join(str(cause).split())}"
        raise CLIError(msg) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise CLIError(" ".join(str(err).split())) from None


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    show = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise CLIError(f"expected key=value overrides, got {bad[0]!r} (e.g. `rtdp train task=pusht_keypoints`)")
    cfg = compose_config(overrides)
    check_config(cfg)
    if show:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg))
        return 0
    from rtdp.policy.loading import CheckpointError
    from rtdp.train.trainer import DataError, train

    try:
        train(cfg)
    except (DataError, CheckpointError) as err:
        raise CLIError(str(err)) from None
    except RuntimeError as err:
        if "CUDA" in str(err) and "available" in str(err):
            raise CLIError(str(err)) from None
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
