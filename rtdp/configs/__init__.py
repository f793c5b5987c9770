"""Hydra configs shipped inside the package: train.yaml and the policy/, task/ and sampler/ groups."""
