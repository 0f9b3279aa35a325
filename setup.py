"""Build the `adaptive_encoder._C` extension from csrc/.

The CPU ops are always built. The CUDA ops (csrc/*.cu) are built when the installed torch
has CUDA and nvcc is found; ADAPTIVE_ENCODER_CUDA=1 forces them (the build fails loudly if
it cannot), ADAPTIVE_ENCODER_CUDA=0 skips them.

Build against the torch you run with: `pip install -e . --no-build-isolation`
(an isolated build env would fetch its own torch, a multi-GB CUDA wheel, with another ABI).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time message only
    sys.exit(
        "adaptive_encoder: torch must be installed before building this package; install it, "
        "then run `pip install -e . --no-build-isolation` (see README.md)."
    )


def _cuda_wanted() -> bool:
    flag = os.environ.get("ADAPTIVE_ENCODER_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        print("adaptive_encoder: CUDA ops skipped (ADAPTIVE_ENCODER_CUDA=0)", file=sys.stderr)
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    if torch.version.cuda is None:
        print(f"adaptive_encoder: CUDA ops skipped (torch {torch.__version__} has no CUDA)", file=sys.stderr)
        return False
    if cpp_extension.CUDA_HOME is None:
        print("adaptive_encoder: CUDA ops skipped (nvcc not found; set CUDA_HOME)", file=sys.stderr)
        return False
    return True


def _extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # The C++ standard is the one torch.utils.cpp_extension picks for this torch. -fopenmp: the
    # ops' at::parallel_for is inline OpenMP; without the flag it ran on one thread (the plan at
    # batch 128 took 203-212 us, 127-128 with it on 2 cores: bench/ab_plan_cpu.py). The GOMP
    # symbols resolve to the libgomp torch has loaded: one OpenMP runtime, torch's thread count.
    cxx = ["-O3", "-fopenmp"]
    if _cuda_wanted():
        sources += sorted(glob.glob(os.path.join("csrc", "*.cu")))
        # sm_90 unless the user names targets; headers of pip-installed CUDA (cusparse.h etc.).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        include_dirs = [os.path.join(here, "csrc")]
        try:
            import nvidia  # noqa: F401  (pip CUDA wheels)

            for base in nvidia.__path__:
                include_dirs += glob.glob(os.path.join(base, "cu*", "include"))
        except ImportError:
            pass
        return cpp_extension.CUDAExtension(
            "adaptive_encoder._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
    return cpp_extension.CppExtension(
        "adaptive_encoder._C", sources, include_dirs=[os.path.join(here, "csrc")], extra_compile_args=cxx
    )


# ADAPTIVE_ENCODER_PREBUILT=1: the extension is already in adaptive_encoder/ (built on another
# machine for this one: bench/prebuilt.py, installed by bench/install_gpu.sh); nothing to compile.
PREBUILT = os.environ.get("ADAPTIVE_ENCODER_PREBUILT", "0") == "1"
if PREBUILT:
    print("adaptive_encoder: using the prebuilt extension in adaptive_encoder/ (ADAPTIVE_ENCODER_PREBUILT=1)",
          file=sys.stderr)

setup(
    # Every subpackage of adaptive_encoder/ (found, not listed: a listed set once shipped a wheel
    # without adaptive_encoder.depth), plus the Triton kernels from kernels/.
    packages=find_packages(include=["adaptive_encoder", "adaptive_encoder.*"]) + ["adaptive_encoder.kernels"],
    package_dir={"adaptive_encoder": "adaptive_encoder", "adaptive_encoder.kernels": "kernels"},
    ext_modules=[] if PREBUILT else [_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
