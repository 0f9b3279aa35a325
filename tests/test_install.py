"""Installed like a library: a real (non-editable) wheel has every subpackage, finds no data
without being told, runs estimate-depths from outside the repository; light imports."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_minilm

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def test_import_is_light():
    code = ("import sys, adaptive_encoder, adaptive_encoder.encoder, adaptive_encoder.patch, adaptive_encoder.ops; "
            "print(sorted(m for m in ('matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
@needs_minilm
def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    env = {**os.environ, "ADAPTIVE_ENCODER_CUDA": "0"}
    env.pop("ADAPTIVE_ENCODER_DATA", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, env=env, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("adaptive_encoder-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env)
    run_env = {**env, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "adaptive_encoder", *args], capture_output=True, text=True,
                              env=run_env, cwd=work)

    where = subprocess.run([sys.executable, "-c", "import adaptive_encoder.depth, adaptive_encoder.kernels, "
                            "adaptive_encoder as a; print(a.__file__)"], capture_output=True, text=True,
                           env=run_env, cwd=work, check=True).stdout
    assert where.startswith(str(target)), where  # the wheel's copy, not the checkout
    no_data = cli("estimate-depths", "--dataset", "trec", "--method", "mi", "--limit", "30", "--out", "out")
    assert no_data.returncode != 0 and "ADAPTIVE_ENCODER_DATA" in no_data.stderr
    ok = cli("estimate-depths", "--dataset", "trec", "--method", "mi", "--limit", "30", "--out", "out",
             "--data", str(SHARED_DATA))
    assert ok.returncode == 0, ok.stderr[-2000:]
    written = sorted(p.name for p in (work / "out").iterdir())
    assert written == ["depths_mi.pt", "fig1_mi_depths.png", "fig5_sentence.png", "mi_estimator.json", "summary.json"]
    assert "wrote out/: mi_estimator.json, depths_mi.pt, summary.json, fig1_mi_depths.png, fig5_sentence.png" \
        in ok.stdout
