"""Samplers: how a plan is made from noise (DDPM, DDIM, streaming SDP, RTI warm start, real-time chunking).
Importing this package imports every module in it, so each sampler registers by defining its class;
`make_sampler` builds any registered sampler from its config node."""

from __future__ import annotations

import importlib
import pkgutil

from rtdp.policy.samplers.base import SAMPLERS, Sampler, make_sampler
from rtdp.policy.samplers.diffusion import DDIMSampler, DDPMSampler
from rtdp.policy.samplers.rtc import RTCSampler
from rtdp.policy.samplers.rti import RTISampler
from rtdp.policy.samplers.rti_renoise import RTIRenoiseSampler
from rtdp.policy.samplers.streaming import StreamingSampler, staircase

for _module in pkgutil.iter_modules(__path__):  # a new sampler file needs no line here
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "RTCSampler",
    "RTIRenoiseSampler",
    "RTISampler",
    "Sampler",
    "StreamingSampler",
    "make_sampler",
    "staircase",
]
