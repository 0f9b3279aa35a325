"""Triton kernels, installed as `adaptive_encoder.kernels`.

On a CPU machine they run only through the Triton interpreter: set TRITON_INTERPRET=1
before this package is imported.
"""
from .attention import triton_varlen_attention
from .gather import triton_gather, triton_scatter, triton_scatter_
from .norm import triton_add_layer_norm, triton_add_layer_norm_into_
from .plan import triton_plan

__all__ = ["triton_gather", "triton_scatter", "triton_scatter_", "triton_plan", "triton_varlen_attention",
           "triton_add_layer_norm", "triton_add_layer_norm_into_"]
