"""Batch prediction with a trained checkpoint, sharded over ranks under torchrun.

    python -m adaptive_encoder predict CHECKPOINT (--input FILE | --dataset NAME [--split test])
           --out preds.jsonl [--limit K] [--batch-size B]
    torchrun --nproc_per_node=2 -m adaptive_encoder predict ...

Writes one JSON line per text, in input order: {"index" (the text's 0-based line in --input,
or its position in the dataset split), "label" (predicted class index), "depth_mean" (mean
depth of the text's real tokens)}. Blank lines of --input are skipped, so their indices are
missing rather than every later text's index shifting. Under torchrun rank r takes the r-th
contiguous share of the texts and writes `<out>.shard<r>of<W>` (renamed into place only when
complete); rank 0 then merges the shards into `<out>`. A rerun with the same number of ranks
skips shards that are complete and were made from the same checkpoint files, texts and depths
(the shard's first line is a fingerprint of them, with the shard's token-layer counts); any
other shard is recomputed. The summary's rate counts only the texts computed in this run, and
its token-layer fraction every shard's (a reused shard's from its first line).

Depths come from the checkpoint's variant: fixed (all N), halting (the model's unit), MI (the
estimator refitted on the checkpoint's training data, deterministic, and refused unless its
token table equals the checkpoint's depth_table.json), reconstruction (only for texts of the
checkpoint's own dataset, from estimate-depths' file).
"""
import hashlib
import json
import os
import time

import torch

from . import distributed


def read_texts(path: str) -> tuple:
    """(texts, indices): the non-empty lines of a UTF-8 text file and their 0-based line numbers;
    errors name the file (and line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path}: no such file")
    texts, indices = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"--input {path}, line {lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if line:
                texts.append(line)
                indices.append(lineno - 1)
    if not texts:
        raise ValueError(f"--input {path}: the file has no text (empty or only blank lines)")
    return texts, indices


def _stat(path: str):
    """(name, size, mtime_ns) of a file, or of each file of a folder; None if absent."""
    if os.path.isdir(path):
        return sorted((n, *_stat(os.path.join(path, n))[1:]) for n in os.listdir(path)
                      if os.path.isfile(os.path.join(path, n)))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return (os.path.basename(path), st.st_size, st.st_mtime_ns)


def shard_fingerprint(checkpoint: str, texts: list, indices: list, dataset_split, depth_dir: str,
                      device: str = "cpu", dtype: str = "torch.float32") -> str:
    """What a shard's lines depend on: the checkpoint's files (path, sizes, times), the shard's
    texts and indices, for a dataset split the reconstruction depth file a run may read, and the
    device type and dtype the model ran in (another rounding can flip a near-tie label)."""
    depth_file = None
    if dataset_split is not None:
        depth_file = _stat(os.path.join(depth_dir, dataset_split[0], "depths_reconstruction.pt"))
    key = [os.path.abspath(checkpoint), _stat(checkpoint), texts, indices, dataset_split, depth_file, device, dtype]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


def _shard_header(fingerprint: str, computed: int, tokens: int) -> str:
    """A shard's first line: the fingerprint of the inputs it was made from, and the shard's
    computed token-layers and real tokens (so a rerun that reuses it reports them)."""
    return json.dumps({"fingerprint": fingerprint, "computed_token_layers": computed, "real_tokens": tokens})


def _complete_shard(path: str, fingerprint: str) -> tuple | None:
    """(computed token-layers, real tokens) of a finished shard at `path` made from the same
    inputs (its first line says), else None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            head = json.loads(f.readline())
        except ValueError:
            return None
    if not isinstance(head, dict) or head.get("fingerprint") != fingerprint:
        return None
    counts = head.get("computed_token_layers"), head.get("real_tokens")
    return counts if all(isinstance(c, int) for c in counts) else None


def _depths_for(meta: dict, tokenizer, words: list, data_root, depth_dir, checkpoint: str):
    """Per-text depth lists (or None per text: the model decides) for the checkpoint's variant."""
    from .depth.pipeline import encode_words

    variant = meta["variant"]
    max_length = meta["config"]["max_length"]
    if variant in ("fixed", "halting"):
        return None
    if variant == "mi":  # exact per-word depths from the refitted estimator (not the token table)
        from .checkpoint import mi_estimator

        est = mi_estimator(meta, tokenizer, data_root, checkpoint=checkpoint)
        enc = encode_words(tokenizer, words, max_length)
        return [est.sequence_depths(words[i], enc.word_ids(i)) for i in range(len(words))]
    raise distributed.InputError(f"predict: {variant} depths for new texts need the anytime MLM's loss tables, "
                                 f"which only exist for the checkpoint's dataset: use --dataset {meta['dataset']} "
                                 f"(depths from {depth_dir}/{meta['dataset']})")


def _write_shard(model, tokenizer, meta, words, depths, indices, batch_size, progress, fingerprint,
                 shard_path) -> tuple:
    """Predict this rank's texts (word lists) into shard_path, header line first; returns
    (computed token-layers, real tokens)."""
    from .depth.pipeline import encode_words
    from .train import Encoded, _device, _progress, batches

    ids = encode_words(tokenizer, words, meta["config"]["max_length"])["input_ids"]
    data = Encoded(ids, [0] * len(ids), depths)
    lines = []
    computed = tokens = 0
    n_batches = (len(ids) + batch_size - 1) // batch_size
    with torch.inference_mode():
        batched = batches(data, batch_size, tokenizer.pad_token_id, device=_device(model))
        for b, (x, mask, d, _) in enumerate(_progress(batched, "predict", progress, n_batches)):
            res = model(x, mask, d)
            real = mask != 0
            per_text = (res.depths * real).sum(1).double() / real.sum(1)
            for j, (label, dm) in enumerate(zip(res.logits.argmax(-1).tolist(), per_text.tolist())):
                lines.append(json.dumps({"index": indices[b * batch_size + j], "label": label,
                                         "depth_mean": round(dm, 6)}))
            computed += res.computed_token_layers
            tokens += res.real_tokens
    tmp = shard_path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in [_shard_header(fingerprint, computed, tokens)] + lines))
    os.replace(tmp, shard_path)  # only a finished shard gets its final name
    return computed, tokens


def predict(checkpoint: str, texts: list, out: str, batch_size: int = 64, progress: bool = True,
            data_root=None, depth_dir: str = "runs/depths", dataset_split: tuple | None = None,
            indices: list | None = None, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Write `out` (see the module docstring); returns {"texts", "computed_texts" (those not
    taken from a finished shard of an earlier run), "seconds" (the slowest computing rank's),
    "token_layer_fraction" (over every text)}. `indices` (one int per text, default 0, 1, ...)
    are written as each line's "index". The model runs on `device` in `dtype`."""
    from .checkpoint import load_checkpoint, read_meta
    from .depth.pipeline import tokenizer_words

    rank, W = distributed.rank(), distributed.world_size()
    shard_path = f"{out}.shard{rank}of{W}"
    meta = read_meta(checkpoint)
    device = torch.device(device)
    indices = list(range(len(texts))) if indices is None else list(indices)
    if len(indices) != len(texts):
        raise ValueError(f"predict: {len(indices)} indices for {len(texts)} texts")
    lo, hi = rank * len(texts) // W, (rank + 1) * len(texts) // W
    fingerprint = shard_fingerprint(checkpoint, texts[lo:hi], indices[lo:hi], dataset_split, depth_dir,
                                    device.type, str(dtype))
    reused = _complete_shard(shard_path, fingerprint)  # a shard of an earlier run on the same inputs is kept
    complete = reused is not None
    computed, tokens = reused if complete else (0, 0)
    # The depths' set-up can be collective (an MI refit sums counts over the ranks), so every
    # rank runs it while any rank has a shard to compute; only those ranks run the model. The
    # model is loaded only then (a rerun whose shards are all finished merges them at once).
    if not distributed.everywhere(complete):
        model, tokenizer, meta = load_checkpoint(checkpoint)
        model.to(device=device, dtype=dtype)
        t0 = time.perf_counter()
        words = [tokenizer_words(tokenizer, t) for t in texts[lo:hi]]
        if dataset_split is not None and meta["variant"] == "reconstruction":
            from .experiment import prepare

            full = prepare(meta["dataset"], tokenizer, meta["layers"], meta["config"]["max_length"],
                           os.path.join(depth_dir, meta["dataset"]), meta.get("model_path"), limit=meta.get("limit", 0),
                           variants=["reconstruction"], data_root=data_root, estimate_missing=False)
            split_depths = full["reconstruction"][1 if dataset_split[1] == "test" else 0].depths
            if len(split_depths) < len(texts):  # a checkpoint of a --limit run: its depth file is as short
                raise distributed.InputError(
                    f"predict: the checkpoint was trained with --limit {meta.get('limit')}; its reconstruction "
                    f"depths cover the first {len(split_depths)} texts of the split, not {len(texts)}: "
                    f"pass --limit {len(split_depths)} or less")
            depths = split_depths[lo:hi]
        else:
            depths = _depths_for(meta, tokenizer, words, data_root, depth_dir, checkpoint)
        if not complete:
            computed, tokens = _write_shard(model, tokenizer, meta, words, depths, indices[lo:hi], batch_size,
                                            progress, fingerprint, shard_path)
    seconds = time.perf_counter() - t0 if not complete else 0.0
    sums = distributed.sum_([computed, tokens, 0 if complete else hi - lo])
    computed, tokens, computed_texts = (int(v) for v in sums)
    seconds = max(distributed.gather_objects(seconds))
    distributed.barrier()
    if distributed.is_main():
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            for r in range(W):
                with open(f"{out}.shard{r}of{W}") as part:
                    part.readline()  # the fingerprint
                    f.write(part.read())
        os.replace(tmp, out)
        for r in range(W):
            os.remove(f"{out}.shard{r}of{W}")
    distributed.barrier()
    return {"texts": len(texts), "computed_texts": computed_texts, "seconds": seconds,
            "token_layer_fraction": computed / max(tokens * meta["layers"], 1)}
