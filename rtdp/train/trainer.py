"""The training loop: AdamW + cosine schedule with warm-up, EMA, gradient clipping, validation loss,
periodic rollout evaluation, TensorBoard, rich progress, atomic checkpoints, bit-for-bit resume, DDP.

Batches are drawn in the training process from windows held in memory (one gather per key), not by
DataLoader workers: on a 2-core machine a loader worker takes a core from the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rtdp import metrics
from rtdp.normalizer import Normalizer
from rtdp.policy.factory import make_policy
from rtdp.policy.loading import (
    CheckpointError,
    load_config,
    load_weights,
    read_tensors,
    resolve_checkpoint,
    verify_checkpoint,
)
from rtdp.train.checkpoint import clean_stale, optimizer_from_tensors, save_checkpoint
from rtdp.train.distributed import DistInfo, all_reduce_mean, init_distributed, shutdown_distributed
from rtdp.train.ema import EMAModel

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(ValueError):
    """The dataset cannot feed this policy/task (missing file, keys that do not match the task spec)."""


def resolve_data_path(path: str | Path) -> Path:
    """A dataset path as given, else relative to the cwd, else to the repo root (`../shared/data/...`)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), REPO_ROOT):
        if (base / p).exists():
            return (base / p).resolve()
    return (Path.cwd() / p).resolve()


# ------------------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """Training windows: all gathered into tensors once (`in_memory`), or gathered per batch from the dataset."""

    dataset: Any
    in_memory: bool
    device: torch.device
    _tensors: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.in_memory:
            self._tensors = _to_device(self.dataset.sample_batch(np.arange(len(self.dataset))), self.device)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        idx = torch.randint(0, len(self), (batch_size,), generator=generator, device=generator.device)
        if self._tensors is not None:
            return _index(self._tensors, idx.to(self.device))
        return _to_device(self.dataset.sample_batch(idx.cpu().numpy()), self.device)

    def batches(self, batch_size: int, max_batches: int):
        """Consecutive batches from the start (the validation set, in a fixed order)."""
        n = min(len(self), batch_size * max_batches)
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            if self._tensors is not None:
                yield _index(self._tensors, idx.to(self.device))
            else:
                yield _to_device(self.dataset.sample_batch(idx.numpy()), self.device)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _index(batch: Any, idx: torch.Tensor) -> Any:
    if isinstance(batch, dict):
        return {k: _index(v, idx) for k, v in batch.items()}
    return batch[idx]


def build_datasets(cfg: DictConfig, copy_to_memory: bool = True) -> tuple[Any, Any, Normalizer]:
    """Training and validation SequenceDatasets of the task spec, and the normaliser fitted on training episodes
    (the replay buffer is copied into memory unless `copy_to_memory` is false, e.g. for large image sets)."""
    from rtdp.datasets import ReplayBuffer, ReplayBufferError
    from rtdp.datasets.dataset import SequenceDataset

    path = resolve_data_path(cfg.task.dataset.path)
    if not path.exists():
        raise DataError(f"dataset {str(path)!r} (task {cfg.task.name}) does not exist; create it (e.g. with "
                        f"`rtdp collect`) or set task.dataset.path=...")
    obs = OmegaConf.to_container(cfg.task.obs, resolve=True)
    action = OmegaConf.to_container(cfg.task.action, resolve=True)
    try:
        buffer = ReplayBuffer.open(path, "r")
        keys = sorted({spec["source"] for spec in [*obs.values(), action]})
        missing = [k for k in keys if k not in buffer]
        if missing:
            raise DataError(f"dataset {str(path)!r} has no key(s) {missing} that task {cfg.task.name!r} maps "
                            f"observations/actions from (it has: {', '.join(buffer.keys())}); fix task.obs/"
                            "task.action or use the dataset collected for this task")
        if copy_to_memory:
            buffer = ReplayBuffer.copy_to_memory(buffer, keys)
        ds = SequenceDataset(buffer, obs, action, horizon=int(cfg.policy.horizon),
                             n_obs_steps=int(cfg.policy.n_obs_steps), n_action_steps=executed_per_plan(cfg),
                             val_ratio=float(cfg.training.val_ratio), seed=int(cfg.seed))
    except (ReplayBufferError, KeyError) as err:
        raise DataError(f"dataset {str(path)!r} does not fit task {cfg.task.name!r}: {err}") from err
    normalizer = ds.get_normalizer()
    _scale_discrete_actions(normalizer, action, cfg.task.name)
    ds.normalizer = normalizer
    val = ds.get_validation_dataset() if ds.val_mask.any() else None
    return ds, val, normalizer


def executed_per_plan(cfg: DictConfig) -> int:
    """Actions the configured sampler executes per plan (its own setting, else the streaming layout the policy
    trains, else 1): training windows reach that many - 1 steps past an episode's end, as Diffusion Policy's do."""
    n = OmegaConf.select(cfg, "sampler.n_action_steps") or OmegaConf.select(cfg, "policy.levels.n_action_steps")
    return int(n or 1)


def _scale_discrete_actions(normalizer: Normalizer, action: dict, task: str) -> None:
    """Apply the task's `action.discrete_scale` to its `action.discrete_dims` (binary dimensions, e.g. a gripper)
    after normalisation; the factor is stored in the normaliser, so checkpoints load with it."""
    dims, factor = list(action.get("discrete_dims") or []), action.get("discrete_scale", 1.0)
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise DataError(f"task {task!r}: action.discrete_scale must be a number > 0, got {factor!r}") from None
    if factor == 1.0:
        return
    if not dims:
        raise DataError(f"task {task!r}: action.discrete_scale={factor:g} needs action.discrete_dims (the "
                        "binary action dimensions it scales), e.g. task.action.discrete_dims=[4]")
    try:
        normalizer.scale_dims("action", dims, factor)
    except ValueError as err:
        raise DataError(f"task {task!r}: {err}; fix task.action.discrete_dims / discrete_scale") from None


def data_meta(ds: Any) -> dict[str, Any]:
    """What a checkpoint must know about the data to rebuild the policy: per-frame obs shapes and Da."""
    sample = ds.sample_batch([0])
    return {"obs_shapes": {k: list(v.shape[2:]) for k, v in sample["obs"].items()},
            "action_dim": int(sample["action"].shape[-1])}


def window_bytes(ds: Any) -> int:
    """Bytes of one training window (all observation frames + the action chunk)."""
    sample = ds.sample_batch([0])
    return sum(t.numel() * t.element_size() for t in [*sample["obs"].values(), sample["action"]])


# ------------------------------------------------------------------------------------------------- schedule
def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then half a cosine to zero at `total_steps` (diffusers' formula,
    written here to keep diffusers out of the dependencies)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return factor


# ------------------------------------------------------------------------------------------------- loop
def evaluate_policy(policy: Any, cfg: DictConfig, n_episodes: int) -> dict[str, Any]:
    """Roll the policy out in the task's env on seeded episodes (the envs package's vectorised evaluator)."""
    from rtdp.envs.evaluate import evaluate

    env = cfg.task.env
    return evaluate(policy, env.id, n_episodes=n_episodes, seed=int(cfg.eval.seed), n_envs=int(cfg.eval.n_envs),
                    obs_mode=env.get("obs_mode"), max_steps=int(env.max_steps), progress=False)


def _shapes(normalizer: Normalizer) -> dict[str, tuple[int, ...]]:
    """Each normalised key with the shape of its coefficients: what two normalisers must share to swap."""
    return {k: tuple(normalizer.stats(k)["scale"].shape) for k in sorted(normalizer.keys())}


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def _set_rng_state(generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" not in tensors or "rng.generator" not in tensors:
        raise CheckpointError("the checkpoint's optimizer.safetensors holds no RNG state, so the run cannot resume "
                              "bit for bit; resume from another checkpoint or start a new run")
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    if "rng.cuda" in tensors and generator.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], generator.device)


class Trainer:
    """One training run of `cfg` (the composed `train.yaml`) writing into `cfg.out_dir`."""

    def __init__(self, cfg: DictConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.out_dir = Path(cfg.out_dir)
        if not self.out_dir.is_absolute():
            self.out_dir = Path.cwd() / self.out_dir
        self.dist, self.device = init_distributed(str(cfg.device))
        if self.device.type == "cpu" and cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        self._check_out_dir()
        torch.manual_seed(int(cfg.seed))
        in_memory = cfg.training.data_in_memory
        self.train_ds, self.val_ds, self.normalizer = build_datasets(cfg, copy_to_memory=in_memory is not False)
        self.meta = data_meta(self.train_ds)
        if in_memory == "auto":  # gather every window once when they fit in a few GiB (low-dim tasks do)
            in_memory = window_bytes(self.train_ds) * len(self.train_ds) < 2 * 2**30
        self.policy = make_policy(cfg.policy, cfg.sampler, self.meta["obs_shapes"], self.meta["action_dim"],
                                  self.normalizer, fps=float(cfg.task.get("fps", 10)),
                                  crop_shape=cfg.task.get("crop_shape")).to(self.device)
        tr = cfg.training
        in_memory = bool(in_memory)
        self.data = TrainingData(self.train_ds, in_memory, self.device)
        self.val_data = TrainingData(self.val_ds, in_memory, self.device) if self.val_ds is not None else None
        optim = cfg.policy.optim
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=float(optim.lr), betas=tuple(optim.betas),
                                           weight_decay=float(optim.weight_decay))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(int(tr.warmup_steps), int(tr.num_steps)))
        self.ema = EMAModel(self.policy, **OmegaConf.to_container(tr.ema, resolve=True))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(cfg.seed) * 1000 + self.dist.rank)
        self.step = 0
        self.last_logs: dict[str, float] = {}
        self.elapsed_s = 0.0  # training wall time, accumulated over resumes
        self.history: list[dict[str, Any]] = []
        if cfg.resume:
            self._resume()
        elif cfg.get("init_from"):
            self._init_from(cfg.init_from)
        self.model = self.policy
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.policy, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -------------------------------------------------------------------------------------- setup
    def _check_out_dir(self) -> None:
        ckpts = self.out_dir / "checkpoints"
        if self.cfg.resume and ckpts.is_dir() and self.dist.is_main:
            for path in clean_stale(self.out_dir):  # what a killed save left behind
                self.log(f"removed the leftover {path.name} of an interrupted checkpoint write")
        has_run = ckpts.is_dir() and any(ckpts.glob("step_*"))
        if self.cfg.resume and not has_run:
            raise CheckpointError(f"resume=true but {ckpts} holds no checkpoint; drop resume=true to start a run")
        if not self.cfg.resume and has_run:
            raise CheckpointError(f"{self.out_dir} already holds a training run; pass resume=true to continue "
                                  "it or choose another out_dir=... (nothing was overwritten)")

    def _resume(self) -> None:
        ckpt = resolve_checkpoint(self.out_dir)
        weights = self._open(ckpt, "resume")
        name = str(self.cfg.policy.get("name"))
        load_weights(self.policy, {k[6:]: v for k, v in weights.items() if k.startswith("model.")}, "model", name)
        load_weights(self.ema.averaged, {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}, "EMA", name)
        if not (ckpt / "train_state.json").is_file():
            raise CheckpointError(f"{ckpt} has no training state (train_state.json); it can be evaluated but "
                                  "not resumed")
        try:
            state = json.loads((ckpt / "train_state.json").read_text())
            steps = (int(state["step"]), int(state["ema_step"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{ckpt / 'train_state.json'} is damaged ({type(err).__name__}: {err}); resume "
                                  "from another checkpoint (an older step_*) or start a new run") from None
        tensors = read_tensors(ckpt / "optimizer.safetensors")
        optimizer_from_tensors(self.optimizer, {k: v.to(self.device) for k, v in tensors.items()
                                                if k.startswith("state.")}, state["param_groups"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self._use_normalizer(Normalizer.from_state_dict(read_tensors(ckpt / "normalizer.safetensors")))
        self.step, self.ema.optimization_step = steps
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.history = list(state.get("history", []))
        _set_rng_state(self.generator, tensors)
        self.log(f"resumed from {ckpt} at step {self.step}")

    def _open(self, ckpt: Path, verb: str) -> dict[str, torch.Tensor]:
        """A checkpoint's weights (`model.*`, `ema.*`), once its files are verified and it holds this run's policy
        type; `verb` (resume, fine-tune) says in the refusal what to do."""
        verify_checkpoint(ckpt)
        saved = load_config(ckpt)
        if saved.policy.get("name") != self.cfg.policy.get("name") or \
                saved.policy.denoiser.get("type") != self.cfg.policy.denoiser.get("type"):
            raise CheckpointError(f"{ckpt} holds a {saved.policy.get('name')!r} policy, not "
                                  f"{self.cfg.policy.get('name')!r}; {verb} with policy={saved.policy.get('name')}")
        return read_tensors(ckpt / "model.safetensors")

    def _use_normalizer(self, normalizer: Normalizer) -> None:
        """Normalise with `normalizer` everywhere this run does: the policy, its EMA copy and the dataset."""
        self.normalizer = normalizer
        self.policy.normalizer = self.ema.averaged.normalizer = self.train_ds.normalizer = normalizer

    def _init_from(self, path: str) -> None:
        """Fine-tuning: start from another run's EMA weights and normaliser, with a fresh optimiser, schedule and
        step count. The normaliser comes with the weights, since they only make sense in its units."""
        ckpt = resolve_checkpoint(path)
        ema = {k[4:]: v for k, v in self._open(ckpt, "fine-tune").items() if k.startswith("ema.")}
        name = str(self.cfg.policy.get("name"))
        load_weights(self.policy, ema, "EMA", name)
        load_weights(self.ema.averaged, ema, "EMA", name)
        normalizer = Normalizer.from_state_dict(read_tensors(ckpt / "normalizer.safetensors"))
        theirs, ours = _shapes(normalizer), _shapes(self.normalizer)
        if theirs != ours:
            raise CheckpointError(f"init_from={path}: the checkpoint normalises {theirs}, this dataset has {ours}; "
                                  "fine-tune on data with the checkpoint's observation and action keys and sizes")
        self._use_normalizer(normalizer)
        self.log(f"fine-tuning from {ckpt}: its EMA weights and normaliser, a fresh optimiser, step 0")

    # -------------------------------------------------------------------------------------- pieces
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self.console.print(f"[train] {msg}")

    def train_step(self) -> float:
        """One optimiser step on one batch; returns the batch loss (its parts are in `last_logs`)."""
        self.model.train()
        batch = self.data.sample(int(self.cfg.training.batch_size), self.generator)
        loss, logs = self.model(batch, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float(self.cfg.training.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.ema.step(self.policy)
        self.step += 1
        self.last_logs = {k: float(v) for k, v in logs.items()}
        return float(loss.detach())

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean denoising loss of the EMA policy on held-out episodes (fixed batches, fixed noise)."""
        if self.val_data is None:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(12345)
        losses = [float(self.ema.averaged.compute_loss(b, generator=gen)[0]) for b in
                  self.val_data.batches(int(self.cfg.training.batch_size), int(self.cfg.training.val_batches))]
        return float(np.mean(losses)) if losses else None

    def rollout(self, n_episodes: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG (resume)
            self.ema.averaged.reset()
            result = evaluate_policy(self.ema.averaged, self.cfg, n_episodes)
        summary = result.get("summary", result)
        return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}

    def save(self) -> Path | None:
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.out_dir, self.step, model=self.policy, ema_model=self.ema.averaged, normalizer=self.normalizer,
                config=self.cfg, data_meta=self.meta, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                rng=_rng_state(self.generator),
                train_state={"ema_step": self.ema.optimization_step, "elapsed_s": self.elapsed_s,
                             "history": self.history}, keep=int(self.cfg.training.keep_checkpoints))
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def _write_history(self) -> None:
        if self.dist.is_main:
            metrics.write_json(self.out_dir / "metrics.json", metrics.record(
                "train", task=self.cfg.task.name, policy=self.cfg.policy.name, history=self.history))

    # -------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train to `training.num_steps` (or `training.max_minutes`); returns the last history record."""
        cfg, tr = self.cfg, self.cfg.training
        writer = None
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            writer = SummaryWriter(str(self.out_dir / "tb"))
        n_params = sum(p.numel() for p in self.policy.parameters())
        self.log(f"{cfg.policy.name} ({n_params / 1e6:.2f}M parameters) on {cfg.task.name}: {len(self.data)} "
                 f"training windows, batch {tr.batch_size}, {tr.num_steps} steps, device {self.device}"
                 + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))
        max_s = float(tr.max_minutes) * 60 if tr.get("max_minutes") else math.inf
        eval_every_s = float(cfg.eval.every_minutes) * 60 if cfg.eval.get("every_minutes") else math.inf
        next_eval_s = (math.floor(self.elapsed_s / eval_every_s) + 1) * eval_every_s if eval_every_s < math.inf \
            else math.inf
        ckpt_every_s = float(tr.checkpoint_every_minutes) * 60 if tr.get("checkpoint_every_minutes") else math.inf
        next_ckpt_s = (math.floor(self.elapsed_s / ckpt_every_s) + 1) * ckpt_every_s if ckpt_every_s < math.inf \
            else math.inf
        loss_avg, last_loss = None, float("nan")
        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console, disable=not self.dist.is_main,
                            transient=False)
        plain_log = not self.console.is_terminal
        t_last = time.perf_counter()
        stop_reason = "num_steps"
        with progress:
            task = progress.add_task("train", total=int(tr.num_steps), completed=self.step, loss=float("nan"))
            while self.step < int(tr.num_steps):
                last_loss = all_reduce_mean(self.train_step(), self.dist, self.device) if self.dist.enabled \
                    else self.train_step()
                now = time.perf_counter()
                self.elapsed_s += now - t_last
                t_last = now
                loss_avg = last_loss if loss_avg is None else 0.98 * loss_avg + 0.02 * last_loss
                progress.update(task, completed=self.step, loss=loss_avg)
                record: dict[str, Any] = {}
                if writer is not None and self.step % int(tr.log_every) == 0:
                    writer.add_scalar("train/loss", last_loss, self.step)
                    for name, value in self.last_logs.items():  # the loss's parts (denoising, auxiliary losses)
                        writer.add_scalar(f"train/{name}", value, self.step)
                    writer.add_scalar("train/lr", self.lr_scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar("train/ema_decay", self.ema.decay, self.step)
                    if plain_log and self.step % (10 * int(tr.log_every)) == 0:
                        self.log(f"step {self.step}/{tr.num_steps} loss {loss_avg:.4f} "
                                 f"({self.elapsed_s / 60:.1f} min)")
                if int(tr.val_every) and self.step % int(tr.val_every) == 0:
                    record["val_loss"] = self.validation_loss()
                do_eval = (int(cfg.eval.every_steps) and self.step % int(cfg.eval.every_steps) == 0) or \
                    self.elapsed_s >= next_eval_s
                if do_eval:
                    if self.elapsed_s >= next_eval_s:
                        next_eval_s += eval_every_s
                    if self.dist.is_main:
                        record["eval"] = self.rollout(int(cfg.eval.episodes))
                    t_last = time.perf_counter()  # rollouts are not training time
                if self.elapsed_s >= max_s:
                    stop_reason = "max_minutes"
                if record or stop_reason != "num_steps":
                    self._record(record, last_loss, loss_avg, writer)
                if (int(tr.checkpoint_every) and self.step % int(tr.checkpoint_every) == 0) or \
                        self.elapsed_s >= next_ckpt_s:
                    if self.elapsed_s >= next_ckpt_s:
                        next_ckpt_s += ckpt_every_s
                    self.save()
                    t_last = time.perf_counter()
                if stop_reason != "num_steps":
                    break
        final: dict[str, Any] = {}
        if self.val_data is not None:
            final["val_loss"] = self.validation_loss()
        if int(cfg.eval.final_episodes) and self.dist.is_main:
            final["eval"] = self.rollout(int(cfg.eval.final_episodes))
            final["final"] = True
        self._record(final, last_loss, loss_avg, writer)
        path = self.save()
        if path is not None:
            self.log(f"stopped at step {self.step} ({stop_reason}, {self.elapsed_s / 60:.1f} min of training); "
                     f"checkpoint {path}")
        if writer is not None:
            writer.close()
        return self.history[-1] if self.history else {}

    def _record(self, record: dict[str, Any], last_loss: float, loss_avg: float | None, writer: Any) -> None:
        record = {"step": self.step, "elapsed_min": self.elapsed_s / 60, "train_loss": last_loss,
                  "train_loss_avg": loss_avg, **record}
        self.history.append(record)
        if writer is not None:
            if record.get("val_loss") is not None:
                writer.add_scalar("val/loss", record["val_loss"], self.step)
            for k, v in (record.get("eval") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(f"eval/{k}", v, self.step)
        if "eval" in record:
            self.log(f"step {self.step} ({record['elapsed_min']:.1f} min): eval "
                     + ", ".join(f"{k}={v:.3f}" for k, v in record["eval"].items() if isinstance(v, float)))
        self._write_history()


def train(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    """Train as `cfg` says; the entry point of `rtdp train` (one call per process under torchrun)."""
    trainer = None
    try:
        trainer = Trainer(cfg, console)
        return trainer.fit()
    finally:
        shutdown_distributed()


__all__ = ["DataError", "DistInfo", "Trainer", "TrainingData", "build_datasets", "train"]
