"""Depth estimation in advance (no halting unit): MI (supervised) and reconstruction (unsupervised)."""
from .mi import MIDepthEstimator

__all__ = ["MIDepthEstimator"]
