"""The CUDA extension built on the CPU machine for the GPU machine, whose device minutes then
go to measuring instead of compiling (62-66 s per fresh machine in runs 2-4, two fresh
machines per session).

    python bench/prebuilt.py build [--python PY] [--out .gpu_build]   here, before the first device call
    python bench/prebuilt.py check [--dir .gpu_build]                 there: exit 0 if it fits
    python bench/prebuilt.py stamp                                    what `check` compares

The GPU machine runs Python 3.12 with torch 2.11.0+cu130 (bench/results/h200/env.txt); a
virtual environment with the same here (default /tmp/v312: `python3.12 -m venv /tmp/v312 &&
/tmp/v312/bin/pip install torch==2.11.0 setuptools ninja numpy`) and this machine's nvcc 13.0
build the same extension for sm_90. `build` compiles the tracked sources in a scratch copy and
writes DIR/_C.<abi>.so (debug info stripped) and DIR/stamp: a hash of csrc/ and setup.py, the
torch version, the Python ABI tag and the target architecture. `check` recomputes the stamp
with the running Python and torch and compares, so a stale or foreign build is never used.
bench/install_gpu.sh (gpu.sh's build stage, gpu_followup.sh's build step) installs a matching
one and builds otherwise. DIR is ignored by git: name it in the device call's `carry`.
"""
import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "9.0"  # H100 and H200


def stamp(root: str = ROOT) -> str:
    """What a build depends on: the extension's sources and build script, this torch, this ABI."""
    import torch

    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "csrc", "*"))) + [os.path.join(root, "setup.py")]:
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read() + b"\0")
    return f"sources {h.hexdigest()[:16]} torch {torch.__version__} {sys.implementation.cache_tag} sm_{ARCH.replace('.', '')}"


def check(directory: str, root: str = ROOT) -> str | None:
    """None if directory holds a build that fits root's sources and the running torch; else why not."""
    try:
        with open(os.path.join(directory, "stamp")) as f:
            theirs = f.read().strip()
    except OSError:
        return f"no stamp in {directory}"
    if not glob.glob(os.path.join(directory, "_C.*.so")):
        return f"no _C.*.so in {directory}"
    ours = stamp(root)
    return None if theirs == ours else f"stamp {theirs!r} is not this checkout's {ours!r}"


def build(python: str, out: str) -> None:
    tracked = subprocess.run(["git", "ls-files", "csrc", "setup.py", "pyproject.toml", "README.md", "adaptive_encoder", "kernels"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as scratch:
        for rel in tracked:
            os.makedirs(os.path.dirname(os.path.join(scratch, rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(scratch, rel))
        env = dict(os.environ, ADAPTIVE_ENCODER_CUDA="1", TORCH_CUDA_ARCH_LIST=ARCH,
                   MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)))
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
        subprocess.run([python, "setup.py", "-q", "build_ext", "--inplace"], cwd=scratch, env=env, check=True)
        (so,) = glob.glob(os.path.join(scratch, "adaptive_encoder", "_C.*.so"))
        # The stamp comes from the target Python and torch, over the sources that were built.
        theirs = subprocess.run([python, os.path.abspath(__file__), "stamp", "--root", scratch],
                                check=True, capture_output=True, text=True).stdout.strip()
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        target = os.path.join(out, os.path.basename(so))
        shutil.copy2(so, target)
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-debug", target], check=True)
        with open(os.path.join(out, "stamp"), "w") as f:
            f.write(theirs + "\n")
    print(f"{target} ({os.path.getsize(target) / 2**20:.1f} MiB): {theirs}")


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build here for the GPU machine")
    b.add_argument("--python", default="/tmp/v312/bin/python",
                   help="a Python with the GPU machine's torch (3.12, torch 2.11.0+cu130)")
    b.add_argument("--out", default=os.path.join(ROOT, ".gpu_build"))
    c = sub.add_parser("check", help="exit 0 if the build in --dir fits this checkout and this torch")
    c.add_argument("--dir", default=os.path.join(ROOT, ".gpu_build"))
    s = sub.add_parser("stamp", help="print the stamp of this checkout, torch and Python")
    s.add_argument("--root", default=ROOT)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.python, a.out)
    elif a.cmd == "check":
        why = check(a.dir)
        print("prebuilt extension: " + ("fits" if why is None else f"not used ({why})"))
        sys.exit(0 if why is None else 1)
    else:
        print(stamp(a.root))


if __name__ == "__main__":
    main()
