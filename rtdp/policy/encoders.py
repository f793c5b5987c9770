"""Observation encoders: every observation key of a window `[B, To, ...]` to one feature vector per frame.

Low-dimensional keys are flattened per frame and go through an MLP (no hidden layers = the paper's plain
concatenation); each camera gets its own ResNet-18 trained from scratch, with GroupNorm instead of
BatchNorm (batch statistics drift under EMA) and a spatial-softmax head, and random crops in training.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear layers with Mish between them; no hidden layers and `out_dim=None` is the identity."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (), out_dim: int | None = None):
        super().__init__()
        dims = [in_dim, *hidden_dims] + ([out_dim] if out_dim is not None else [])
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.Mish())
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of `num_kp` learned keypoint heat maps (Levine et al. 2016): `[N, 2*num_kp]`."""

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int = 32):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        heat = self.keypoints(features).flatten(2)  # [N, K, H*W]
        attention = F.softmax(heat, dim=-1)
        return (attention @ self.grid).flatten(1)  # [N, K*2]


def random_crop(images: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """An independent random `height x width` crop of every image in `[N, C, H, W]`."""
    n, _, h, w = images.shape
    top = torch.randint(0, h - height + 1, (n,), generator=generator, device=images.device)
    left = torch.randint(0, w - width + 1, (n,), generator=generator, device=images.device)
    rows = (top[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, chans, rows, cols]


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top : top + height, left : left + width]


class ResNet18Encoder(nn.Module):
    """One camera: random/center crop -> ResNet-18 trunk (GroupNorm, from scratch) -> spatial softmax -> linear."""

    def __init__(self, image_shape: Sequence[int], crop_shape: Sequence[int] | None = None, num_kp: int = 32,
                 out_dim: int = 64):
        super().__init__()
        # torchvision's ResNet-18 is the reference implementation; only the norm layer and head change.
        from torchvision.models import resnet18

        channels, height, width = image_shape
        self.crop = tuple(crop_shape) if crop_shape else (height, width)
        trunk = resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(c // 16, c))
        if channels != 3:
            trunk.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.trunk = nn.Sequential(*list(trunk.children())[:-2])  # drop avgpool + fc
        fh, fw = math.ceil(self.crop[0] / 32), math.ceil(self.crop[1] / 32)
        self.pool = SpatialSoftmax(512, fh, fw, num_kp)
        self.proj = nn.Linear(2 * num_kp, out_dim)
        self.out_dim = out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop != tuple(images.shape[-2:]):
            images = random_crop(images, *self.crop) if self.training else center_crop(images, *self.crop)
        return self.proj(self.pool(self.trunk(images)))


class ObservationEncoder(nn.Module):
    """Dict of observation windows `{key: [B, To, ...]}` -> features `[B, To, out_dim]`.

    Keys whose per-frame shape has three dimensions are camera images (CHW in [0, 1]); all others are
    low-dimensional and are concatenated (in sorted key order) before the MLP. A one-hot key named in
    `embed_keys` (`{task_onehot: 16}`, multitask Meta-World's task id) enters as a learned embedding of its
    argmax, of the width given, instead of as the one-hot itself.
    """

    def __init__(self, obs_shapes: Mapping[str, Sequence[int]], mlp_hidden_dims: Sequence[int] = (),
                 mlp_out_dim: int | None = None, crop_shape: Sequence[int] | None = None, image_feature_dim: int = 64,
                 num_kp: int = 32, embed_keys: Mapping[str, int] | None = None):
        super().__init__()
        self.obs_shapes = {k: tuple(int(d) for d in v) for k, v in sorted(obs_shapes.items())}
        self.image_keys = [k for k, s in self.obs_shapes.items() if len(s) == 3]
        self.lowdim_keys = [k for k, s in self.obs_shapes.items() if len(s) != 3]
        embed_keys = dict(embed_keys or {})
        for key in embed_keys:
            if key not in self.lowdim_keys or len(self.obs_shapes[key]) != 1:
                raise ValueError(f"policy.encoder.embed_keys names {key!r}, which is not a one-hot (1-D) observation; "
                                 f"the policy observes {list(self.obs_shapes)}")
        self.embeddings = nn.ModuleDict({k: nn.Embedding(self.obs_shapes[k][0], int(d)) for k, d in embed_keys.items()})
        self.cameras = nn.ModuleDict({k: ResNet18Encoder(self.obs_shapes[k], crop_shape, num_kp, image_feature_dim)
                                      for k in self.image_keys})
        lowdim = sum(int(embed_keys[k]) if k in embed_keys else math.prod(self.obs_shapes[k])
                     for k in self.lowdim_keys)
        self.lowdim = MLP(lowdim, mlp_hidden_dims, mlp_out_dim) if self.lowdim_keys else None
        self.out_dim = (self.lowdim.out_dim if self.lowdim is not None else 0) + image_feature_dim * len(self.image_keys)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.obs_shapes if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; the policy expects {list(self.obs_shapes)}")
        first = obs[next(iter(self.obs_shapes))]
        batch, steps = first.shape[:2]
        feats = []
        if self.lowdim is not None:
            flat = torch.cat([self.embeddings[k](obs[k].argmax(dim=-1)) if k in self.embeddings
                              else obs[k].reshape(batch, steps, -1).float() for k in self.lowdim_keys], dim=-1)
            feats.append(self.lowdim(flat))
        for key in self.image_keys:
            images = obs[key].reshape(batch * steps, *obs[key].shape[2:]).float()
            feats.append(self.cameras[key](images).reshape(batch, steps, -1))
        return torch.cat(feats, dim=-1)
