"""Depth-adaptive Transformer encoders with real compaction (Liu et al., AAAI 2021).

    from adaptive_encoder import AdaptiveEncoder, apply_adaptive_encoder
"""
from . import ops
from .encoder import AdaptiveEncoder, AdaptiveEncoderOutput
from .ops import gather, plan, resolve_backend, scatter
from .patch import apply_adaptive_encoder
from .plan import Plan, make_plan

__all__ = [
    "AdaptiveEncoder", "AdaptiveEncoderOutput", "apply_adaptive_encoder",
    "gather", "scatter", "plan", "make_plan", "Plan", "resolve_backend", "ops",
]
