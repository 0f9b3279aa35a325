"""Depths from mutual information between a word's occurrence and the labels (supervised).

For word x and label y, i_x = "x occurs in the text", i_y = "the text has label y":
    MI(x) = sum_y sum_{i_x, i_y in {0,1}} P(i_x, i_y) log( P(i_x, i_y) / (P(i_x) P(i_y)) )
with P(i_x, i_y) from document counts plus additive smoothing (0.1 per cell) and the
marginals taken from that smoothed joint. The score -log MI(x) is split into N equal-width
bins over the range of the scores; bin k (1..N) is the depth, so the most label-informative
words (highest MI, lowest score) are the shallowest.

MI that is 0, negative, or below `min_mi` (1e-12; floating point can land there for a word
independent of the labels) carries no information: such words get depth N and are left out
of the bin range, so one of them cannot squeeze every other word into a single bin.

Other tokens (documented choices):
    words never seen in training  -> N (no evidence of being informative: the deep end)
    [CLS], [SEP]                  -> the largest depth of the real words of the sequence
    padding                       -> 0
    subword pieces                -> the depth of the word they belong to
"""
import json
import os
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def _world() -> int | None:
    """World size when torch.distributed is initialised with more than one rank, else None."""
    from .. import distributed

    return distributed.world_size() if distributed.active() else None


def _sum_over_ranks(counts: tuple) -> tuple:
    from .. import distributed

    n11, n1_, n_1, n_docs = counts
    flat = torch.from_numpy(np.concatenate([n11.ravel(), n1_.ravel(), n_1.ravel(), [n_docs]]))
    flat = distributed.sum_tensor(flat).numpy()  # float64 sums of integer counts: exact
    V, C = n11.shape
    return (flat[:V * C].reshape(V, C), flat[V * C:V * C + V].reshape(V, 1),
            flat[V * C + V:V * C + V + C].reshape(1, C), float(flat[-1]))


class MIDepthEstimator:
    def __init__(self, num_layers: int, smoothing: float = 0.1, min_mi: float = 1e-12):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.num_layers = num_layers
        self.smoothing = smoothing
        self.min_mi = min_mi
        self.mi: dict = {}
        self.word_depth: dict = {}
        self.bin_edges = None  # (N+1,) score edges, or None if no word had MI > min_mi

    # -- fitting --
    def fit(self, docs: Sequence, labels: Sequence) -> "MIDepthEstimator":
        """docs: list of word lists (training split only); labels: one int per doc.

        The words should be the ones the model's tokenizer sees (its normaliser and
        pre-tokeniser): `adaptive_encoder.depth.texts_to_words(tokenizer, texts)` makes them.
        """
        if isinstance(docs, str) or any(isinstance(d, str) for d in docs):
            raise TypeError("MIDepthEstimator.fit expects each document as a list of words, got a string; "
                            "make word lists with adaptive_encoder.depth.texts_to_words(tokenizer, texts)")
        if len(docs) != len(labels):
            raise ValueError(f"{len(docs)} docs but {len(labels)} labels")
        world = _world()
        if len(docs) == 0 and world is None:
            raise ValueError("fit needs at least one document")
        vocab: dict = {}
        indptr, indices = [0], []
        for doc in docs:
            ids = {vocab.setdefault(w, len(vocab)) for w in doc}
            indices.extend(ids)
            indptr.append(len(indices))
        label_values = np.unique(np.asarray(labels, dtype=np.int64))
        if world is not None:
            # torch.distributed: each rank holds a share of the documents. Agree on one sorted
            # vocabulary and label set, count locally, then sum the counts over the ranks, so
            # every rank ends with the table a 1-process fit on all documents gives.
            import torch.distributed as dist

            gathered = [None] * world
            dist.all_gather_object(gathered, (sorted(vocab), label_values.tolist()))
            words = sorted({w for ws, _ in gathered for w in ws})
            label_values = np.array(sorted({y for _, ys in gathered for y in ys}), dtype=np.int64)
            if not words or label_values.size == 0:
                raise ValueError("fit needs at least one document (on all ranks together)")
            index = {w: i for i, w in enumerate(words)}
            remap = np.array([index[w] for w in sorted(vocab, key=vocab.get)], dtype=np.int64)
            indices = remap[np.asarray(indices, dtype=np.int64)].tolist() if indices else []
        else:
            words = [None] * len(vocab)
            for w, i in vocab.items():
                words[i] = w
        X = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(docs), len(words)))
        y = np.searchsorted(label_values, np.asarray(labels, dtype=np.int64))
        Y = sp.csr_matrix((np.ones(len(y)), (np.arange(len(y)), y)), shape=(len(docs), len(label_values)))
        counts = self._counts(X, Y)
        if world is not None:
            counts = _sum_over_ranks(counts)
        mi = self._mutual_information(*counts)
        self.mi = dict(zip(words, mi.tolist()))
        self.word_depth = dict(zip(words, self._bin(mi).tolist()))
        return self

    def fit_replicated(self, docs: Sequence, labels: Sequence) -> "MIDepthEstimator":
        """fit() for documents that every rank holds in full (each rank loaded the dataset):
        under torch.distributed each rank counts only its share docs[r::W], so the summed counts,
        and the table, are those of one process fitting `docs`, not of W copies of them (which
        would weaken the smoothing W-fold and move words across bin edges). Alone: fit(docs)."""
        world = _world()
        if world is None:
            return self.fit(docs, labels)
        if len(docs) != len(labels):
            raise ValueError(f"{len(docs)} docs but {len(labels)} labels")
        from .. import distributed

        r = distributed.rank()
        return self.fit(list(docs)[r::world], list(labels)[r::world])

    @staticmethod
    def _counts(X, Y) -> tuple:
        """(n11 (V,C) docs with word and label, n1_ (V,1) docs with word, n_1 (1,C) docs with
        label, n_docs) from X (D,V) binary doc-term and Y (D,C) one-hot labels."""
        n11 = np.asarray((X.T @ Y).todense(), dtype=np.float64)
        n1_ = np.asarray(X.sum(0), dtype=np.float64).reshape(-1, 1)
        n_1 = np.asarray(Y.sum(0), dtype=np.float64).reshape(1, -1)
        return n11, n1_, n_1, float(X.shape[0])

    def _mutual_information(self, n11, n1_, n_1, n_docs) -> np.ndarray:
        """(V,) summed over labels, from the counts of `_counts`."""
        n10 = n1_ - n11
        n01 = n_1 - n11
        n00 = n_docs - n11 - n10 - n01
        a = self.smoothing
        total = n_docs + 4 * a
        cells = [(c + a) / total for c in (n11, n10, n01, n00)]  # P(1,1) P(1,0) P(0,1) P(0,0)
        px1 = cells[0] + cells[1]
        py1 = cells[0] + cells[2]
        marg = [(px1, py1), (px1, 1 - py1), (1 - px1, py1), (1 - px1, 1 - py1)]
        mi = np.zeros_like(cells[0], dtype=np.float64)
        for p, (px, py) in zip(cells, marg):
            with np.errstate(divide="ignore", invalid="ignore"):
                term = np.where(p > 0, p * np.log(p / (px * py)), 0.0)
            mi += term
        return mi.sum(1)

    def _bin(self, mi: np.ndarray) -> np.ndarray:
        N = self.num_layers
        depth = np.full(mi.shape, N, dtype=np.int64)
        ok = mi > self.min_mi
        if not ok.any():
            self.bin_edges = None
            return depth
        score = -np.log(mi[ok])
        lo, hi = float(score.min()), float(score.max())
        self.bin_edges = np.linspace(lo, hi, N + 1)
        if hi == lo:  # every informative word equally so: all in the shallowest bin
            depth[ok] = 1
        else:
            depth[ok] = np.clip(np.floor((score - lo) / (hi - lo) * N).astype(np.int64) + 1, 1, N)
        return depth

    # -- lookup --
    def depth_of(self, word: str) -> int:
        return self.word_depth.get(word, self.num_layers)

    def sequence_depths(self, words: Sequence, word_ids: Sequence) -> list:
        """Depths of one tokenised sequence. words: the text's words; word_ids: for every
        token, the index of its word (None for special tokens), as a fast tokenizer's
        `encoding.word_ids()` gives. Specials get the largest word depth of the sequence."""
        word_d = [self.depth_of(w) for w in words]
        deepest = max(word_d) if word_d else self.num_layers
        return [deepest if i is None else word_d[i] for i in word_ids]

    def batch_depths(self, docs: Sequence, encoding, pad_to: int | None = None) -> torch.Tensor:
        """(B, T) int64 depths for a batch tokenised with `is_split_into_words=True`;
        padding positions (attention_mask 0) get 0."""
        mask = torch.as_tensor(encoding["attention_mask"])
        out = torch.zeros(mask.shape, dtype=torch.int64)
        for b, words in enumerate(docs):
            ids = encoding.word_ids(b)
            d = self.sequence_depths(words, ids)
            out[b] = torch.tensor(d) * mask[b]
        return out

    # -- persistence --
    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"num_layers": self.num_layers, "smoothing": self.smoothing, "min_mi": self.min_mi,
                       "bin_edges": None if self.bin_edges is None else self.bin_edges.tolist(),
                       "mi": self.mi, "word_depth": self.word_depth}, f)

    @classmethod
    def load(cls, path) -> "MIDepthEstimator":
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        est = cls(state["num_layers"], state["smoothing"], state["min_mi"])
        est.mi, est.word_depth = state["mi"], state["word_depth"]
        est.bin_edges = None if state["bin_edges"] is None else np.asarray(state["bin_edges"])
        return est


INHERIT = -1  # table value of a '##' continuation piece: the depth of its word's first piece
SEQ_MAX = -2  # table value of [CLS]/[SEP]: the largest word depth of the sequence


def lookup_table(est: MIDepthEstimator, tokenizer) -> torch.Tensor:
    """(vocab,) int64 table for TokenDepthLookup from a fitted estimator and a WordPiece tokenizer.

    Exact for words that are one vocabulary entry (most words). A word split into pieces is
    looked up by its first piece: that entry keeps the depth of the piece as a word of its own
    when it is one, else the smallest depth of the fitted words that start with it. Entries
    no fitted word reaches get N, like unseen words. For exact per-word depths of pre-split
    text use `MIDepthEstimator.batch_depths`.
    """
    vocab = tokenizer.get_vocab()
    N = est.num_layers
    table = torch.full((len(tokenizer),), -100, dtype=torch.int64)
    multi = {}
    for word, depth in est.word_depth.items():
        pieces = tokenizer.tokenize(word)
        if len(pieces) == 1 and pieces[0] in vocab:
            table[vocab[pieces[0]]] = depth
        elif pieces and pieces[0] in vocab:
            first = vocab[pieces[0]]
            multi[first] = min(multi.get(first, N), depth)
    for first, depth in multi.items():
        if table[first] == -100:
            table[first] = depth
    table[table == -100] = N
    for token, idx in vocab.items():
        if token.startswith("##"):
            table[idx] = INHERIT
    for idx in (tokenizer.cls_token_id, tokenizer.sep_token_id):
        if idx is not None:
            table[idx] = SEQ_MAX
    if tokenizer.pad_token_id is not None:
        table[tokenizer.pad_token_id] = 0
    return table


class TokenDepthLookup(torch.nn.Module):
    """input_ids (B,T), attention_mask (B,T) or None -> depths (B,T) int64, all on the ids'
    device: one table index and two vectorised passes, no Python loop, so MI depths cost
    nothing at inference. Usable as `apply_adaptive_encoder(model, depth_fn=lookup)`."""

    def __init__(self, table: torch.Tensor, num_layers: int):
        super().__init__()
        self.register_buffer("table", table.long())
        self.num_layers = num_layers

    @classmethod
    def from_estimator(cls, est: MIDepthEstimator, tokenizer) -> "TokenDepthLookup":
        return cls(lookup_table(est, tokenizer), est.num_layers)

    FILE = "depth_table.json"

    def save(self, directory) -> str:
        """Write the table as plain JSON beside a `save_pretrained` folder; returns the file's path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, self.FILE)
        with open(path, "w") as f:
            json.dump({"num_layers": self.num_layers, "table": self.table.tolist()}, f)
        return path

    @classmethod
    def load(cls, directory) -> "TokenDepthLookup":
        path = os.path.join(directory, cls.FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no depth table at {path} (written by TokenDepthLookup.save)")
        with open(path) as f:
            data = json.load(f)
        return cls(torch.tensor(data["table"], dtype=torch.int64), int(data["num_layers"]))

    def _table_on(self, device: torch.device) -> torch.Tensor:
        """The table on `device`. A depth_fn is not a registered submodule of the patched model,
        so `model.to(...)` leaves it behind: copy once per device and keep the copy, without
        touching the buffer, so threads calling with ids on different devices never see each
        other's table. A copy is remade when the buffer is replaced or written in place."""
        table = self.table
        if table.device == device:
            return table
        # device -> (source table, its version, the copy there); made at the first copy, so
        # lookups pickled before it have it too
        copies = self.__dict__.setdefault("_copies", {})
        kept = copies.get(device)
        if kept is None or kept[0] is not table or kept[1] != table._version:
            kept = (table, table._version, table.to(device))
            copies[device] = kept  # one dict store: atomic under the GIL
        return kept[2]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        d = self._table_on(input_ids.device)[input_ids]
        T = d.shape[1]
        pos = torch.arange(T, device=d.device).expand_as(d)
        # Continuation pieces take the depth of the closest word start to their left.
        start = torch.where(d != INHERIT, pos, torch.zeros_like(pos)).cummax(dim=1).values
        d = d.gather(1, start)
        d = torch.where(d == INHERIT, torch.full_like(d, self.num_layers), d)  # a '##' piece at t=0
        real = torch.ones_like(d, dtype=torch.bool) if attention_mask is None else attention_mask != 0
        special = d == SEQ_MAX
        word_max = torch.where(special | ~real, torch.zeros_like(d), d).amax(1, keepdim=True)
        # A text with no words (only [CLS] [SEP]) gets N, as `sequence_depths` gives it.
        word_max = word_max.masked_fill(word_max == 0, self.num_layers)
        d = torch.where(special, word_max.expand_as(d), d)
        return torch.where(real, d, torch.zeros_like(d))
