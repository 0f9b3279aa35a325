"""bench/prebuilt.py: a CUDA extension built on the CPU machine is used on the GPU machine only
when its stamp fits that checkout's sources, torch and Python (else install_gpu.sh builds)."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import bench_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def prebuilt():
    return bench_module("prebuilt")


@pytest.fixture
def checkout(tmp_path):
    """A copy of what a build depends on: csrc/ and setup.py."""
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    return tmp_path


def _build_dir(path, stamp: str, so: bool = True):
    path.mkdir()
    (path / "stamp").write_text(stamp + "\n")
    if so:
        (path / "_C.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    return str(path)


def test_a_fitting_build_is_used_and_any_change_refuses_it(prebuilt, checkout, tmp_path):
    import torch

    root = str(checkout)
    stamp = prebuilt.stamp(root)
    assert f"torch {torch.__version__} {sys.implementation.cache_tag} sm_90" in stamp
    assert prebuilt.stamp(root) == stamp  # deterministic
    good = _build_dir(tmp_path / "good", stamp)
    assert prebuilt.check(good, root) is None
    assert "no _C" in prebuilt.check(_build_dir(tmp_path / "noso", stamp, so=False), root)
    assert "no stamp" in prebuilt.check(str(tmp_path / "missing"), root)
    other_torch = _build_dir(tmp_path / "torch", stamp.replace(torch.__version__, "0.0.0+elsewhere"))
    assert "is not this checkout's" in prebuilt.check(other_torch, root)
    for n, changed in enumerate(("csrc/ops_cuda.cu", "setup.py")):  # a source or the build script changed
        with open(checkout / changed, "a") as f:
            f.write("\n")
        assert "is not this checkout's" in prebuilt.check(good, root), changed
        good = _build_dir(tmp_path / f"rebuilt{n}", prebuilt.stamp(root))  # built again: fits
        assert prebuilt.check(good, root) is None


def test_check_cli_exit_code(checkout, tmp_path):
    """The exit code install_gpu.sh reads: 1 and the reason when nothing fits."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "prebuilt.py"), "check", "--dir",
                          str(tmp_path / "none")], capture_output=True, text=True)
    assert out.returncode == 1 and "not used (no stamp" in out.stdout
