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
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


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
        """docs: list of word lists (training split only); labels: one int per doc."""
        if len(docs) == 0:
            raise ValueError("fit needs at least one document")
        if len(docs) != len(labels):
            raise ValueError(f"{len(docs)} docs but {len(labels)} labels")
        vocab: dict = {}
        indptr, indices = [0], []
        for doc in docs:
            ids = {vocab.setdefault(w, len(vocab)) for w in doc}
            indices.extend(ids)
            indptr.append(len(indices))
        X = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(docs), len(vocab)))
        label_values, y = np.unique(np.asarray(labels), return_inverse=True)
        Y = sp.csr_matrix((np.ones(len(y)), (np.arange(len(y)), y)), shape=(len(docs), len(label_values)))
        mi = self._mutual_information(X, Y)
        words = [None] * len(vocab)
        for w, i in vocab.items():
            words[i] = w
        self.mi = dict(zip(words, mi.tolist()))
        self.word_depth = dict(zip(words, self._bin(mi).tolist()))
        return self

    def _mutual_information(self, X, Y) -> np.ndarray:
        """(V,) summed over labels; X (D,V) binary doc-term, Y (D,C) one-hot labels."""
        n_docs = X.shape[0]
        n11 = np.asarray((X.T @ Y).todense())           # word present, label y   (V, C)
        n1_ = np.asarray(X.sum(0)).reshape(-1, 1)        # docs containing the word
        n_1 = np.asarray(Y.sum(0)).reshape(1, -1)        # docs with label y
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
