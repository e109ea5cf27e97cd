"""Hydra entry points: run one simulation (``python -m simulations.run``)."""
