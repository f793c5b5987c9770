"""Samplers: how a plan is made from noise (DDPM, DDIM, streaming SDP, RTI warm start). Importing this package
registers the built-in ones; `make_sampler` builds any registered sampler from its config node."""

from __future__ import annotations

from rtdp.policy.samplers.base import SAMPLERS, Sampler, make_sampler
from rtdp.policy.samplers.diffusion import DDIMSampler, DDPMSampler
from rtdp.policy.samplers.rti import RTISampler
from rtdp.policy.samplers.rti_renoise import RTIRenoiseSampler
from rtdp.policy.samplers.streaming import StreamingSampler, staircase

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "RTIRenoiseSampler",
    "RTISampler",
    "Sampler",
    "StreamingSampler",
    "make_sampler",
    "staircase",
]
