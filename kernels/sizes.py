"""Launch-size arithmetic for the kernels' Python wrappers, on plain ints.

triton.cdiv and triton.next_power_of_2 are ConstexprFunction objects in triton 3.6 and 3.7
(callable inside kernels too), and each host call goes through that wrapper (~2-3 us of Python
on the CPU machine); a launch-bound eager forward makes a few dozen. These are the same
functions on Python ints (tests/test_ops.py compares them with Triton's).

INTERPRET: whether the kernels run in Triton's CPU interpreter. Read once, as Triton reads the
variable once (when a kernel is decorated).
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1."""
    return 1 << (n - 1).bit_length()
