"""Sentence classification with depth-adaptive BERT (the paper's model) and the halting baseline.

AdaptiveClassifier: BERT embeddings -> AdaptiveEncoder -> v = ReLU([max-pool; mean-pool])
over the real tokens of the final states (each token after its own last layer: the states
at n_max, halted tokens copied upward) -> dropout -> linear. Depths come from outside
(MI / reconstruction estimators, or all N for the fixed-depth baseline: same code path).

Halting-unit baseline (Elbayad et al. 2020 as Liu et al. set it up): a halting unit on the
bottom layer, a linear map of each token's layer-1 state to a softmax over depths 1..N.
Layer 1 runs on every token (every depth is >= 1), the unit picks each token's depth, and
layers 2..N run depth-adaptively. As in Elbayad et al.'s token-level halting, a token halts
at the first depth d where the cumulative probability P(depth <= d) reaches
`halting_threshold` (0.9). An argmax instead predicts the most common pseudo-label for
every token. Measured on TREC, that was depth 1 everywhere, at 77.8 % accuracy. It is trained in a second stage on pseudo-labels (see
`halting_pseudo_labels`); its cost, D*N multiply-adds per token, is counted in `flops`.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import AdaptiveEncoder


@dataclass
class ClassifierOutput:
    logits: torch.Tensor        # (B, C)
    depths: torch.Tensor        # (B, T) depths used (0 at padding)
    computed_token_layers: int  # token-layers actually run (layer 1 of the halting path included)
    real_tokens: int


def pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ReLU([max-pool; mean-pool]) over real tokens. states (B,T,D), mask (B,T) bool -> (B,2D)."""
    m = mask.unsqueeze(-1)
    mx = states.masked_fill(~m, torch.finfo(states.dtype).min).amax(1)
    mean = (states * m).sum(1) / m.sum(1).clamp(min=1)
    return F.relu(torch.cat([mx, mean], dim=-1))


class AdaptiveClassifier(nn.Module):
    def __init__(self, bert, num_labels: int, dropout: float = 0.1, halting: bool = False,
                 halting_threshold: float = 0.9):
        super().__init__()
        if not 0.0 < halting_threshold <= 1.0:
            raise ValueError(f"halting_threshold must be in (0, 1], got {halting_threshold}")
        self.halting_threshold = halting_threshold
        self.bert = bert
        self.num_layers = bert.config.num_hidden_layers
        D = bert.config.hidden_size
        # Inference on a GPU takes graph mode where it pays (graphs.AUTO_ROWS); training, the
        # CPU and larger batches run eagerly.
        self.encoder = AdaptiveEncoder.from_bert(bert, cuda_graphs="auto")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * D, num_labels)
        self.halting = nn.Linear(D, self.num_layers) if halting else None
        if halting:  # layers 2..N, driven by the halting unit's depths (minus one)
            self.upper = AdaptiveEncoder.from_model(bert, first_layer=1, cuda_graphs="auto")

    def embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,T) ids, (B,T) mask -> (B,T,D) embeddings, the same for a text whatever its padding.
        BERT-style embeddings number positions 0..T-1 over padding too, so left padding would
        shift a text's positions: they are counted over its real tokens instead (right padding
        gives the usual 0..len-1). RoBERTa/MPNet-style embeddings (a padding_idx) already
        count them from the ids."""
        if hasattr(self.bert.embeddings, "padding_idx"):
            return self.bert.embeddings(input_ids=input_ids)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return self.bert.embeddings(input_ids=input_ids, position_ids=positions)

    def classify(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(pool(states, mask)))

    def forward(self, input_ids, attention_mask, depths=None, anytime: bool = False):
        """ClassifierOutput; with anytime=True the (N, B, C) logits of layer_logits instead (so a
        DistributedDataParallel wrapper sees the anytime classifier's forward too)."""
        if anytime:
            return self.layer_logits(input_ids, attention_mask)
        mask = attention_mask != 0
        x = self.embed(input_ids, mask)
        if self.halting is not None and depths is None:
            depths, states, computed = self._halting_forward(x, mask)
        else:
            if depths is None:
                depths = torch.full_like(input_ids, self.num_layers)
            depths = torch.where(mask, depths, torch.zeros_like(depths))
            out = self.encoder(x, depths, mask)
            states, computed = out.last_hidden_state, sum(out.plan.layer_counts)
        return ClassifierOutput(self.classify(states, mask), depths, computed, int(mask.sum()))

    def halting_logits(self, layer1_states: torch.Tensor) -> torch.Tensor:
        return self.halting(layer1_states)  # (B, T, N): depth k+1 at index k

    def halting_depths(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., N) logits -> (...) int64: first depth whose cumulative probability >= threshold."""
        cum = logits.float().softmax(-1).cumsum(-1)
        return ((cum < self.halting_threshold).sum(-1) + 1).clamp(max=self.num_layers)

    def _halting_forward(self, x, mask):
        if self.num_layers == 1:
            raise ValueError("the halting baseline needs at least 2 layers")
        first = self.encoder(x, mask.long(), mask)  # layer 1 on every real token
        h1 = first.last_hidden_state
        depths = self.halting_depths(self.halting_logits(h1))
        depths = torch.where(mask, depths, torch.zeros_like(depths))
        out = self.upper(h1, (depths - 1).clamp(min=0), mask)
        return depths, out.last_hidden_state, sum(first.plan.layer_counts) + sum(out.plan.layer_counts)

    def layer_logits(self, input_ids, attention_mask) -> torch.Tensor:
        """(N, B, C) classifier logits read at every layer of a full-depth pass (the shared head)."""
        mask = attention_mask != 0
        states = self.encoder.all_layer_states(self.embed(input_ids, mask), mask)
        return torch.stack([self.classify(h, mask) for h in states])


def halting_pseudo_labels(layer_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pseudo depth per example from classification accuracy across layers.

    layer_logits (N, B, C) of the anytime classifier, labels (B,) -> (B,) int64 in 1..N:
    the first layer n whose prediction is correct and stays correct at every deeper layer;
    N when the deepest layer is wrong (no layer can be trusted, so use them all)."""
    correct = layer_logits.argmax(-1) == labels.unsqueeze(0)  # (N, B)
    N = correct.shape[0]
    # stays[n] = correct at n and at every layer above it: a reversed cumulative AND.
    stays = correct.flip(0).cumprod(0).flip(0).bool()
    first = torch.where(stays.any(0), stays.float().argmax(0) + 1, torch.full_like(labels, N))
    return first.long()
