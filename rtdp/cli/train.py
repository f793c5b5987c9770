"""`rtdp train policy=<name> task=<name> [key=value ...]`: compose the hydra config and train.

Multi-process: `torchrun --nproc_per_node 2 -m rtdp.cli.main train ...` (DDP; gloo on CPU, nccl on GPU).
Examples:
    rtdp train task=pusht_keypoints training.num_steps=20000
    rtdp train policy=transformer task=pusht_image device=cuda
    rtdp train out_dir=runs/train/pusht_keypoints_unet1d resume=true
"""

from __future__ import annotations

import sys

from rtdp.cli.main import CLIError


def help_text() -> str:
    """The docstring plus what can be chosen, read off the config folders and the registries."""
    from pathlib import Path

    from omegaconf import OmegaConf

    import rtdp.policy.transformer  # the built-in denoisers register when their modules are imported
    import rtdp.policy.unet1d  # noqa: F401
    from rtdp.policy.denoiser import DENOISERS
    from rtdp.policy.levels import LEVEL_SAMPLERS
    from rtdp.policy.samplers import SAMPLERS
    from rtdp.policy.schedules import SCHEDULES

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
