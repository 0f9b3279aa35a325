"""Dataset -> per-token depths with either estimator; what the CLI and the trainer call.

Words are the tokenizer's own words: its normaliser (lower-casing, accent stripping for an
uncased BERT) and its pre-tokeniser (whitespace and punctuation split). MI is fitted on
them, and each token sequence is `tokenizer(words, is_split_into_words=True)`, so a word's
depth lands on all its WordPiece pieces exactly.

Depth lists: {split: [LongTensor (T_i,)]}, one per text, aligned with that tokenisation
(truncated at max_length), specials included, no padding.
"""
import os
import time

import torch

from .. import distributed
from ..pretrained import load_pretrained, model_label, truncate_layers

from .mi import MIDepthEstimator
from .reconstruction import (AnytimeMLM, cached_anytime_mlm, cached_loss_tables, cpu_state, loss_tables, table_depths,
                             train_anytime_mlm)


def tokenizer_words(tokenizer, text: str) -> list:
    """The words of `text` as a fast tokenizer splits them before WordPiece (lower-casing,
    accents and punctuation as the tokenizer does): what MI depths are fitted and looked up on."""
    backend = tokenizer.backend_tokenizer
    norm = backend.normalizer.normalize_str(text) if backend.normalizer else text
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(norm)]


def texts_to_words(tokenizer, texts) -> list:
    """list of texts -> list of word lists that match `tokenizer` (for MIDepthEstimator.fit)."""
    if isinstance(texts, str):
        raise TypeError("texts_to_words expects a list of texts, got one string")
    return [tokenizer_words(tokenizer, t) for t in texts]


def encode_words(tokenizer, docs, max_length: int):
    return tokenizer(docs, is_split_into_words=True, truncation=True, max_length=max_length)


def mi_depths(splits: dict, tokenizer, num_layers: int, max_length: int = 128, smoothing: float = 0.1):
    """Fit on splits['train'] only; returns (estimator, depth lists for every split). Under
    torchrun every rank holds the whole split and gets the 1-process table (fit_replicated)."""
    words = {name: [tokenizer_words(tokenizer, t) for t in s.texts] for name, s in splits.items()}
    est = MIDepthEstimator(num_layers, smoothing=smoothing).fit_replicated(words["train"], splits["train"].labels)
    out = {}
    for name, docs in words.items():
        enc = encode_words(tokenizer, docs, max_length)
        out[name] = [torch.tensor(est.sequence_depths(docs[i], enc.word_ids(i))) for i in range(len(docs))]
    return est, out


def reconstruction_depths(splits: dict, bert, tokenizer, lam: float = 0.1, steps: int = 300,
                          batch_size: int = 32, lr: float = 5e-5, max_length: int = 128,
                          cache_dir: str | None = None, seed: int = 0, progress: bool = False,
                          depth_splits: tuple | None = None):
    """Train the anytime MLM on the training texts (no labels), then depths for every split
    (or only the splits named in `depth_splits`: each token costs one forward pass).

    Under torchrun the MLM is trained data parallel (DDP keeps the ranks' weights equal) and the
    ranks share the loss tables (loss_tables); every rank returns everything.

    Returns (model, depth lists, per-step training losses, loss tables)."""
    torch.manual_seed(seed)
    model = AnytimeMLM(bert)
    texts = mlm_texts(splits, tokenizer)
    train = dict(steps=steps, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed,
                 progress=progress and distributed.is_main())
    if steps <= 0:
        losses = []
    elif cache_dir:  # a rerun (an interrupted estimate resuming) loads the trained MLM
        losses = cached_anytime_mlm(model, tokenizer, texts["train"], cache_dir, **train)
    else:
        losses = train_anytime_mlm(model, tokenizer, texts["train"], **train)
    tables, out = {}, {}
    for name, ts in texts.items():
        if depth_splits is not None and name not in depth_splits:
            continue
        if cache_dir:
            tables[name] = cached_loss_tables(model, tokenizer, ts, cache_dir, max_length=max_length,
                                              progress=progress)
        else:
            tables[name] = loss_tables(model, tokenizer, ts, max_length=max_length, progress=progress)
        out[name] = [table_depths(t, lam) for t in tables[name]]
    return model, out, losses, tables


def mlm_texts(splits: dict, tokenizer) -> dict:
    """The texts the anytime MLM reads: the tokenizer's words joined by spaces (so the MLM's
    tokenisation equals `encode_words` of the same words)."""
    return {name: [" ".join(tokenizer_words(tokenizer, t)) for t in s.texts] for name, s in splits.items()}


def estimate_reconstruction(splits: dict, bert, tokenizer, out_dir: str | None = None, lam: float = 0.1,
                            steps: int = 300, max_length: int = 128, progress: bool = False,
                            model: str | None = None):
    """The anytime MLM on every layer of `bert` (a whole pretrained encoder) and its depths;
    with out_dir, writes anytime_mlm.pt, depths_reconstruction.pt ({"layers", "max_length",
    "lam", "model", "depths"}) and the loss-table cache there: what `estimate-depths` writes and
    the experiments read. Depths for an encoder of N < its layers are cut from the same loss
    tables (saved_loss_tables), so every N of a sweep sees one MLM.

    model: the argument `bert` was loaded with (None: MiniLM, as in load_pretrained); its
    `model_label` is recorded so that a run on another model refuses these depths.

    Returns (the depth file's dict, per-step training losses, loss tables {split: [(T_i, layers)]})."""
    cache = os.path.join(out_dir, "cache") if out_dir else None
    mlm, depths, losses, tables = reconstruction_depths(splits, bert, tokenizer, lam=lam, steps=steps,
                                                        max_length=max_length, cache_dir=cache, progress=progress)
    saved = {"layers": bert.config.num_hidden_layers, "max_length": max_length, "lam": lam,
             "model": model_label(model), "depths": depths}
    if out_dir and distributed.is_main():  # under torchrun every rank has them; rank 0 writes
        os.makedirs(out_dir, exist_ok=True)
        distributed.save_atomically(cpu_state(mlm), os.path.join(out_dir, "anytime_mlm.pt"))
        distributed.save_atomically(saved, os.path.join(out_dir, "depths_reconstruction.pt"))
    distributed.barrier()  # the files are there for every rank's next read
    return saved, losses, tables


def saved_loss_tables(depth_dir: str, splits: dict, tokenizer, mlm_layers: int, model_path: str | None = None,
                      max_length: int = 512, progress: bool = False) -> dict:
    """{split: [(T_i, N_mlm) loss tables]} of the anytime MLM that `estimate-depths` saved in
    depth_dir (anytime_mlm.pt, mlm_layers = N_mlm layers, as recorded in depths_reconstruction.pt). Read from depth_dir/cache when there (same weights, texts and
    max length), otherwise recomputed and cached.

    Why: depths for an encoder of N < N_mlm layers are argmin over the table's first N
    columns. The losses of layers 1..N do not depend on the layers above them, so one MLM
    serves every N (it was trained with the loss summed over all N_mlm layers; an MLM trained
    on N layers alone could differ slightly)."""
    state = torch.load(os.path.join(depth_dir, "anytime_mlm.pt"))
    bert, _ = load_pretrained(model_path)
    truncate_layers(bert, mlm_layers)
    model = AnytimeMLM(bert)
    model.load_state_dict(state)
    cache = os.path.join(depth_dir, "cache")
    return {name: cached_loss_tables(model, tokenizer, ts, cache, max_length=max_length, progress=progress)
            for name, ts in mlm_texts(splits, tokenizer).items()}


def summarize(depth_lists: list, num_layers: int) -> dict:
    """Average depth, histogram over 0..N and the token-layer fraction of a list of sequences."""
    flat = torch.cat(depth_lists) if depth_lists else torch.zeros(0, dtype=torch.long)
    hist = torch.bincount(flat, minlength=num_layers + 1)[: num_layers + 1]
    return {
        "tokens": int(flat.numel()),
        "avg_depth": float(flat.float().mean()) if flat.numel() else 0.0,
        "histogram": hist.tolist(),
        "token_layer_fraction": float(flat.sum()) / max(flat.numel() * num_layers, 1),
        "n_max_mean": float(torch.tensor([float(d.max()) for d in depth_lists]).mean()) if depth_lists else 0.0,
    }


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
