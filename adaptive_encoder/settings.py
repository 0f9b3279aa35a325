"""Module settings switched for the length of a block.

A few module-level flags (graphs.PLAN_ON_HOST, graphs.DENSE_ROWS, graphs.AUTO_ROWS, graphs.STACK,
encoder.DENSE_ROWS, norm.FUSED, norm.EAGER_ROWS, norm.CUDA_CPP, ops.DIRECT, attention.FLASH) pick
between two exact ways of computing the same thing. They exist so that a benchmark or a check
can time or compare both ways in one run; they are not for threads that want different ones
at once.
"""
from contextlib import contextmanager


@contextmanager
def switched(namespace: dict, name: str, value):
    """Inside: namespace[name] = value (namespace: a module's globals()); the value found on entry
    is restored on exit, also on an exception."""
    before = namespace[name]
    namespace[name] = value
    try:
        yield
    finally:
        namespace[name] = before
