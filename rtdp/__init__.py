"""rtdp: a real-time diffusion-policy control stack."""

__version__ = "0.1.0"
