"""Noise schedules: how a clean action chunk is noised to a level, and how a denoiser's output is read back.

Levels are per action position (`[B, T]`) from the start, because streaming diffusion keeps a buffer whose
noise level rises along the chunk; a `[B]` or scalar level broadcasts over positions. Two parameterisations
share one interface, so every sampler works with both:

- `DDPMSchedule`: discrete levels k ∈ {-1, 0, …, K-1}, `x_k = √ᾱ_k·x0 + √(1-ᾱ_k)·ε`; k = -1 is clean (ᾱ = 1,
  DDIM's `set_alpha_to_one`).
- `EDMSchedule`: continuous σ ≥ 0 (Karras et al. 2022), `x_σ = x0 + σ·ε` with EDM preconditioning; σ = 0 is
  clean.

Written here rather than taken from diffusers: its schedulers step one scalar timestep for the whole sample,
and the streaming, warm-start and inpainting samplers need a level per position. The maths is diffusers'
(`DDPMScheduler`/`DDIMScheduler` with Diffusion Policy's settings) and the tests check it against diffusers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from rtdp.policy.registry import Registry, register_subclass

ModelFn = Callable[[Tensor, Tensor], Tensor]  # (model input [B,T,Da], model level [B] or [B,T]) -> output
SCHEDULES: Registry[NoiseSchedule] = Registry("noise schedule")


def per_position(level: Tensor | float, x: Tensor) -> Tensor:
    """Shape a level (scalar, `[B]` or `[B,T]`) to `[B, T, 1]` so it broadcasts over action dimensions."""
    level = torch.as_tensor(level, device=x.device)
    if level.ndim == 0:
        return level.reshape(1, 1, 1).expand(x.shape[0], x.shape[1], 1)
    if level.ndim == 1:
        return level.reshape(-1, 1, 1).expand(x.shape[0], x.shape[1], 1)
    if level.ndim == 2:
        return level.unsqueeze(-1).expand(x.shape[0], x.shape[1], 1)
    raise ValueError(f"a noise level must be a scalar, [B] or [B, T]; got shape {tuple(level.shape)}")


class NoiseSchedule(ABC):
    """Forward noising, the training target, and reading a denoiser's output as (x̂0, ε̂). A subclass sets `name`
    to register itself (`schedule.name` in a policy config)."""

    name: ClassVar[str]
    prediction_type: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_subclass(SCHEDULES, cls)

    @abstractmethod
    def add_noise(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        """The chunk `x0` noised to `level` with the given Gaussian `noise`."""

    @abstractmethod
    def model_input(self, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """What the denoiser is fed for iterate `x` at `level`: (scaled input, level conditioning)."""

    @abstractmethod
    def read_output(self, x: Tensor, level: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """The denoiser's raw output at `(x, level)` read as (x̂0 unclipped, ε̂)."""

    @abstractmethod
    def training_target(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        """What the denoiser should output for `add_noise(x0, noise, level)` (loss weights are all one)."""

    @abstractmethod
    def sample_training_levels(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                               device: torch.device | str | None = None) -> Tensor:
        """Levels drawn from the training distribution, one per entry of `shape`."""

    @abstractmethod
    def inference_levels(self, num_steps: int, device: torch.device | str | None = None) -> Tensor:
        """`num_steps + 1` levels, noisiest first, ending at the clean level."""

    @abstractmethod
    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """A sample at the noisiest level (where sampling starts)."""

    clip_sample: bool = True
    clip_range: float = 1.0

    def predict(self, model_fn: ModelFn, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """One denoiser evaluation at `(x, level)` → (x̂0, ε̂); x̂0 clipped to the data range when configured,
        ε̂ as the model gave it (diffusers' `use_clipped_model_output=False`)."""
        x0, eps = self.read_output(x, level, model_fn(*self.model_input(x, level)))
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps

    def ddim_step(self, x0: Tensor, eps: Tensor, level_next: Tensor) -> Tensor:
        """Deterministic DDIM / Euler step: re-noise x̂0 along ε̂ to `level_next` (the same formula for both
        parameterisations: √ᾱ'·x̂0 + √(1-ᾱ')·ε̂, or x̂0 + σ'·ε̂)."""
        return self.add_noise(x0, eps, level_next)


def _betas_squaredcos_cap_v2(num_steps: int) -> Tensor:
    """Nichol & Dhariwal's cosine schedule, betas capped at 0.999 (diffusers' `squaredcos_cap_v2`)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                         for i in range(num_steps)], dtype=torch.float64)


class DDPMSchedule(NoiseSchedule):
    """Discrete-time DDPM with K training levels; level -1 is clean."""

    name = "ddpm"

    def __init__(self, num_train_steps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 prediction_type: str = "epsilon", clip_sample: bool = True, clip_range: float = 1.0,
                 beta_start: float = 1e-4, beta_end: float = 0.02, spacing: str = "leading"):
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {prediction_type!r}")
        if spacing not in ("leading", "trailing"):
            raise ValueError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
        if beta_schedule == "squaredcos_cap_v2":
            betas = _betas_squaredcos_cap_v2(num_train_steps)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule must be 'squaredcos_cap_v2' or 'linear', got {beta_schedule!r}")
        self.num_train_steps = num_train_steps
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_range = clip_range
        self.spacing = spacing
        self.betas = betas
        # ᾱ indexed by level + 1, so that level -1 (clean) reads ᾱ = 1.
        self._abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])

    @property
    def alphas_cumprod(self) -> Tensor:
        return self._abar[1:]

    def abar(self, level: Tensor, like: Tensor) -> Tensor:
        """ᾱ at `level`, shaped `[B, T, 1]` in `like`'s dtype and device."""
        k = per_position(level, like).long()
        if int(k.min()) < -1 or int(k.max()) >= self.num_train_steps:
            raise ValueError(f"DDPM levels must be in [-1, {self.num_train_steps - 1}], "
                             f"got [{int(k.min())}, {int(k.max())}]")
        return self._abar.to(like.device)[k + 1].to(like.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        ab = self.abar(level, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def model_input(self, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        return x, torch.as_tensor(level, device=x.device).to(x.dtype)

    def read_output(self, x: Tensor, level: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.abar(level, x)
        if self.prediction_type == "epsilon":
            return (x - (1 - ab).sqrt() * out) / ab.sqrt(), out
        noisy = ab < 1
        eps = torch.where(noisy, (x - ab.sqrt() * out) / (1 - ab).clamp_min(1e-20).sqrt(), torch.zeros_like(x))
        return out, eps

    def training_target(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        return noise if self.prediction_type == "epsilon" else x0

    def sample_training_levels(self, shape, generator=None, device=None) -> Tensor:
        return torch.randint(0, self.num_train_steps, shape, generator=generator, device=device)

    def inference_levels(self, num_steps: int, device=None) -> Tensor:
        """Diffusers' spacing: 'leading' (Diffusion Policy's DDIM: 90, 80, …, 0) or 'trailing' (99, 89, …, 9)."""
        K = self.num_train_steps
        if not 1 <= num_steps <= K:
            raise ValueError(f"num_steps must be in [1, {K}] for a {K}-step DDPM schedule, got {num_steps}")
        if self.spacing == "leading":
            levels = torch.arange(num_steps - 1, -1, -1) * (K // num_steps)
        else:
            levels = torch.round(torch.arange(K, 0, -K / num_steps)).long() - 1
        return torch.cat([levels, torch.tensor([-1])]).to(device)

    def prior(self, shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def ddpm_step(self, x: Tensor, level: Tensor, level_next: Tensor, x0: Tensor, noise: Tensor | None) -> Tensor:
        """Ancestral step: sample q(x_{k'} | x_k, x̂0), the DDPM posterior for any k > k' ≥ -1 ("fixed_small"
        variance, as diffusers). Positions whose level does not fall (k' = k) are left unchanged."""
        ab_t, ab_p = self.abar(level, x), self.abar(level_next, x)
        falls = per_position(level_next, x) < per_position(level, x)
        ab_t_safe = torch.where(falls, ab_t, torch.zeros_like(ab_t))  # no 0/0 where nothing moves
        alpha = ab_t_safe / ab_p
        beta = 1 - alpha
        mean = (ab_p.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_p) * x) / (1 - ab_t_safe)
        if noise is not None:
            var = ((1 - ab_p) / (1 - ab_t_safe) * beta).clamp_min(1e-20)
            mean = mean + torch.where(per_position(level_next, x) >= 0, var.sqrt() * noise, torch.zeros_like(x))
        return torch.where(falls, mean, x)

    def ddim_step_eta(self, x0: Tensor, eps: Tensor, level: Tensor, level_next: Tensor, eta: float,
                      noise: Tensor) -> Tensor:
        """Stochastic DDIM step (eta > 0; eta = 1 with unclipped x̂0 is the DDPM posterior sample)."""
        ab_t, ab_p = self.abar(level, x0), self.abar(level_next, x0)
        var = (1 - ab_p) / (1 - ab_t).clamp_min(1e-20) * (1 - ab_t / ab_p)
        std = eta * var.clamp_min(0).sqrt()
        return ab_p.sqrt() * x0 + (1 - ab_p - std**2).clamp_min(0).sqrt() * eps + std * noise


class EDMSchedule(NoiseSchedule):
    """Continuous σ (Karras et al., EDM): `x = x0 + σ·ε`, preconditioned denoiser
    `D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise)`; the network F is trained on the target that makes the
    EDM loss weight λ(σ)·c_out² equal to one.

    Training σ (`training_sigma`): `lognormal` (EDM's: ln σ ~ N(p_mean, p_std²)) or `loglogistic` (MoDE's: ln σ
    logistic with location `loc` (default ln σ_data) and `scale`, truncated to [sigma_min, sigma_max]).
    Inference grid (`grid`): `karras` (ρ-spaced from σ_max to σ_min) or `exponential` (equally spaced in ln σ,
    MoDE's); both end at σ = 0."""

    name = "edm"
    prediction_type = "edm"
    TRAINING_SIGMAS = ("lognormal", "loglogistic")
    GRIDS = ("karras", "exponential")

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 rho: float = 7.0, p_mean: float = -1.2, p_std: float = 1.2, clip_sample: bool = True,
                 clip_range: float = 1.0, training_sigma: str = "lognormal", loc: float | None = None,
                 scale: float = 0.5, grid: str = "karras"):
        if training_sigma not in self.TRAINING_SIGMAS:
            raise ValueError(f"schedule.training_sigma must be one of {', '.join(self.TRAINING_SIGMAS)}, "
                             f"got {training_sigma!r}")
        if grid not in self.GRIDS:
            raise ValueError(f"schedule.grid must be one of {', '.join(self.GRIDS)}, got {grid!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"the EDM schedule needs 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        if scale <= 0:
            raise ValueError(f"schedule.scale (the log-logistic scale) must be > 0, got {scale}")
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.p_mean, self.p_std = p_mean, p_std
        self.clip_sample, self.clip_range = clip_sample, clip_range
        self.training_sigma, self.grid = training_sigma, grid
        self.loc = math.log(sigma_data) if loc is None else float(loc)
        self.scale = float(scale)

    def _coefficients(self, level: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sigma = per_position(level, like).to(like.dtype)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return sigma, c_skip, c_out, c_in

    def add_noise(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        return x0 + per_position(level, x0).to(x0.dtype) * noise

    def model_input(self, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """c_noise = ¼·ln σ, scaled by 100 so the denoiser's level embedding sees DDPM's 0…99 range."""
        _, _, _, c_in = self._coefficients(level, x)
        sigma = torch.as_tensor(level, device=x.device).to(x.dtype)
        return c_in * x, 25.0 * sigma.clamp_min(1e-8).log()

    def read_output(self, x: Tensor, level: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        sigma, c_skip, c_out, _ = self._coefficients(level, x)
        x0 = c_skip * x + c_out * out
        eps = torch.where(sigma > 0, (x - x0) / sigma.clamp_min(1e-20), torch.zeros_like(x))
        return x0, eps

    def training_target(self, x0: Tensor, noise: Tensor, level: Tensor) -> Tensor:
        _, c_skip, c_out, _ = self._coefficients(level, x0)
        return (x0 - c_skip * self.add_noise(x0, noise, level)) / c_out

    def sample_training_levels(self, shape, generator=None, device=None) -> Tensor:
        if self.training_sigma == "loglogistic":
            # inverse CDF of the logistic in ln σ, on the part of [0, 1] that maps inside [σ_min, σ_max]
            lo, hi = (1 / (1 + math.exp(-(math.log(s) - self.loc) / self.scale))
                      for s in (self.sigma_min, self.sigma_max))
            u = lo + (hi - lo) * torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
            return (self.loc + self.scale * torch.logit(u)).exp().clamp(self.sigma_min, self.sigma_max).float()
        return (self.p_mean + self.p_std * torch.randn(shape, generator=generator, device=device)).exp()

    def inference_levels(self, num_steps: int, device=None) -> Tensor:
        """`num_steps` σ from σ_max down to σ_min, then 0: ρ-spaced (`karras`) or equally spaced in ln σ
        (`exponential`)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
        ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        if self.grid == "exponential":
            sig = (math.log(self.sigma_max) + ramp * (math.log(self.sigma_min) - math.log(self.sigma_max))).exp()
        else:
            inv = 1 / self.rho
            sig = (self.sigma_max**inv + ramp * (self.sigma_min**inv - self.sigma_max**inv)) ** self.rho
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float().to(device)

    def prior(self, shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
        return self.sigma_max * torch.randn(shape, generator=generator, device=device, dtype=dtype)


def make_schedule(cfg: Mapping[str, Any] | None = None) -> NoiseSchedule:
    """A schedule from a config node `{name: ddpm|edm|..., ...kwargs}` (default: Diffusion Policy's DDPM-100)."""
    cfg = dict(cfg or {})
    cls = SCHEDULES.get(cfg.pop("name", "ddpm"))
    try:
        return cls(**cfg)
    except TypeError as err:  # an unknown option: say which schedule and what it was
        raise ValueError(f"schedule {cls.name!r}: {err}") from None


def raise_level(schedule: NoiseSchedule, x: Tensor, level: Tensor, level_up: Tensor, noise: Tensor) -> Tensor:
    """Forward-noise `x` from `level` to the higher `level_up` (q(x_up | x)); positions not raised stay put.

    DDPM: √(ᾱ'/ᾱ)·x + √(1 - ᾱ'/ᾱ)·ε; EDM: x + √(σ'² - σ²)·ε."""
    up = per_position(level_up, x) > per_position(level, x)
    if isinstance(schedule, DDPMSchedule):
        ratio = schedule.abar(level_up, x) / schedule.abar(level, x)
        raised = ratio.sqrt() * x + (1 - ratio).clamp_min(0).sqrt() * noise
    else:
        s, s_up = per_position(level, x).to(x.dtype), per_position(level_up, x).to(x.dtype)
        raised = x + (s_up**2 - s**2).clamp_min(0).sqrt() * noise
    return torch.where(up, raised, x)
