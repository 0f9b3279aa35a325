"""Training, evaluation and checkpoints for AdaptiveClassifier.

Variants (same code path; only where depths come from differs):
    fixed           all real tokens at depth N
    mi              MI depths (estimator fitted on the training split)
    reconstruction  anytime-MLM reconstruction depths (no labels used)
    halting         halting unit on layer 1. The training split is divided once (by seed):
                    90 % for stage 1, 10 % held out for stage 2. Stage 1: encoder and shared
                    classifier trained with the mean of the classification losses read at
                    every layer (the anytime classifier the pseudo-labels need). Stage 2:
                    encoder frozen; on the held-out 10 %, each example's pseudo depth is the
                    first layer whose prediction is right and stays right (halting_pseudo_labels),
                    and the unit learns it for every real token of the example.
                    Why held out: after fine-tuning, even layer 1 classifies almost every
                    *training* example correctly, so pseudo-labels from training accuracy say
                    "depth 1" everywhere (measured on TREC: the unit then put every token at
                    depth 1, 79.2 % test accuracy against 95.8 % at fixed depth).

Adam, gradient-norm clipping at 5, dropout 0.1, inputs clipped at 512 tokens. Training runs
on the model's device; with bf16=True its forward passes run under torch.autocast(bfloat16)
(weights, gradients and Adam stay float32; no loss scaling is needed with bfloat16's range),
which is what pays on a GPU. Evaluation is float32.

Data parallel under `torchrun` (adaptive_encoder/distributed.py): every rank draws the same
shuffled order, each global batch of `batch_size` examples is split across the ranks
(rank r takes rows r, r+W, ...), the model is wrapped in DistributedDataParallel, and each
rank's loss is its examples' summed loss x W / global batch size, so the averaged gradient
is exactly the 1-process gradient of the same global batch. A final global batch smaller
than the number of ranks is dropped. Progress bars on rank 0 only; evaluation shards the
examples and sums the counts.
"""
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import distributed
from .classifier import AdaptiveClassifier, halting_pseudo_labels

VARIANTS = ("fixed", "mi", "reconstruction", "halting")


@dataclass
class TrainConfig:
    lr: float = 5e-5
    epochs: int = 3
    batch_size: int = 32
    seed: int = 0
    dropout: float = 0.1
    clip: float = 5.0
    max_length: int = 512
    halting_epochs: int = 5
    halting_lr: float = 1e-3
    halting_holdout: float = 0.1
    bf16: bool = False  # forward passes under torch.autocast(bfloat16) (module docstring)


@dataclass
class Encoded:
    """A tokenised split: ids[i] (T_i,) with specials, labels[i], depths[i] (T_i,) or None."""

    ids: list
    labels: list
    depths: list | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)

    def subset(self, idx) -> "Encoded":
        return Encoded([self.ids[i] for i in idx], [self.labels[i] for i in idx],
                       None if self.depths is None else [self.depths[i] for i in idx], dict(self.meta))


def batches(data: Encoded, batch_size: int, pad_id: int, shuffle: bool = False, generator=None,
            shard: tuple | None = None, device=None):
    """Yields (input_ids, attention_mask, depths or None, labels), padded to the batch's longest,
    built on the CPU and moved to `device` when one is given (a model's: see _device).

    shard=(rank, world): this rank's rows (rank, rank+world, ...) of every global batch; a
    global batch with fewer rows than `world` is skipped on every rank."""
    order = torch.randperm(len(data), generator=generator).tolist() if shuffle else list(range(len(data)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if shard is not None:
            if len(idx) < shard[1]:
                continue
            idx = idx[shard[0]::shard[1]]
        T = max(len(data.ids[i]) for i in idx)
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        depths = torch.zeros((len(idx), T), dtype=torch.long) if data.depths is not None else None
        for r, i in enumerate(idx):
            n = len(data.ids[i])
            ids[r, :n] = torch.as_tensor(data.ids[i])
            mask[r, :n] = 1
            if depths is not None:
                depths[r, :n] = torch.as_tensor(data.depths[i][:n])
        labels = torch.tensor([data.labels[i] for i in idx])
        if device is not None:
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            depths = None if depths is None else depths.to(device)
        yield ids, mask, depths, labels


def _device(model) -> torch.device:
    """Where a model's batches go: its parameters' device."""
    return next(model.parameters()).device


def _progress(iterable, desc, enabled, total=None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and distributed.is_main()), leave=False)


def _global_mean(loss_sum: torch.Tensor, count: int) -> tuple:
    """(loss to backpropagate, global mean loss to log) from this rank's summed loss over its
    `count` items. The loss is the sum x W / the global count: DDP's gradient average is then
    the mean over the global batch, exactly as one process computes it."""
    W = distributed.world_size()
    n = distributed.sum_([count])[0]
    loss = loss_sum * (W / n)
    return loss, (distributed.sum_([loss_sum.item()])[0] / n if W > 1 else loss.item())


def _autocast(device: torch.device, cfg: TrainConfig):
    """The context of a training forward: autocast to bfloat16 with cfg.bf16, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def _shard():
    return (distributed.rank(), distributed.world_size()) if distributed.active() else None


def train(model: AdaptiveClassifier, data: Encoded, cfg: TrainConfig, pad_id: int, progress: bool = False) -> dict:
    """Train in place, on the model's device; returns {"losses": [...], "seconds": float}."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    halting = model.halting is not None
    if halting:  # hold out the pseudo-label split (see the module docstring)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_hold = max(1, int(round(len(data) * cfg.halting_holdout)))
        data, held_out = data.subset(order[n_hold:]), data.subset(order[:n_hold])
    device = _device(model)  # the batches go where the model is
    params = [p for n, p in model.named_parameters() if not n.startswith("halting.")]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    losses = []
    t0 = time.perf_counter()
    n_batches = (len(data) + cfg.batch_size - 1) // cfg.batch_size
    net = distributed.data_parallel(model)
    autocast = _autocast(device, cfg)
    model.train()
    for epoch in range(cfg.epochs):
        for ids, mask, depths, labels in _progress(batches(data, cfg.batch_size, pad_id, True, gen, _shard(), device),
                                                   f"epoch {epoch + 1}/{cfg.epochs}", progress, n_batches):
            with autocast:
                if halting:  # anytime classifier: mean loss over the layers' shared-head predictions
                    logits = net(ids, mask, anytime=True).float()
                    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.repeat(logits.shape[0]), reduction="sum")
                    loss_sum = loss_sum / logits.shape[0]
                else:
                    loss_sum = F.cross_entropy(net(ids, mask, depths).logits.float(), labels, reduction="sum")
            loss, logged = _global_mean(loss_sum, len(labels))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            losses.append(logged)
    if halting:
        losses += train_halting_unit(model, held_out, cfg, pad_id, gen, progress)
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0}


def train_halting_unit(model, data, cfg, pad_id, gen, progress) -> list:
    """Stage 2 on `data` (the held-out split): encoder frozen; each real token learns its
    example's pseudo depth."""
    opt = torch.optim.Adam(model.halting.parameters(), lr=cfg.halting_lr)
    unit = distributed.data_parallel(model.halting)
    losses = []
    device = _device(model)
    for epoch in range(cfg.halting_epochs):
        for ids, mask, _, labels in _progress(batches(data, cfg.batch_size, pad_id, True, gen, _shard(), device),
                                              f"halting unit {epoch + 1}/{cfg.halting_epochs}", progress):
            model.eval()
            with torch.no_grad(), _autocast(device, cfg):
                target = halting_pseudo_labels(model.layer_logits(ids, mask), labels)  # (B,) in 1..N
                m = mask != 0
                h1 = model.encoder(model.embed(ids, m), m.long(), m).last_hidden_state
            with _autocast(device, cfg):
                logits = unit(h1)[m].float()  # the unit's logits over depths 1..N
            tok_target = (target.unsqueeze(1).expand_as(mask)[m]) - 1
            loss, logged = _global_mean(F.cross_entropy(logits, tok_target, reduction="sum"), int(m.sum()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(logged)
    return losses


@torch.inference_mode()
def evaluate(model: AdaptiveClassifier, data: Encoded, pad_id: int, batch_size: int = 64,
             progress: bool = False) -> dict:
    """accuracy, average depth of real tokens, computed token-layer fraction, samples/s. The
    batches go to the model's device (its parameters')."""
    model.eval()
    correct = tokens = computed = 0
    depth_sum = 0
    preds = []
    t0 = time.perf_counter()
    index = list(range(len(data)))
    if distributed.active():  # each rank its contiguous share; counts summed below
        r, W = distributed.rank(), distributed.world_size()
        index = index[r * len(data) // W:(r + 1) * len(data) // W]
        data = data.subset(index)
    n_batches = (len(data) + batch_size - 1) // batch_size
    batched = batches(data, batch_size, pad_id, device=_device(model))
    for ids, mask, depths, labels in _progress(batched, "evaluate", progress, n_batches):
        out = model(ids, mask, depths)
        p = out.logits.argmax(-1)
        preds += p.tolist()
        correct += int((p == labels).sum())
        tokens += out.real_tokens
        computed += out.computed_token_layers
        depth_sum += int(out.depths[mask != 0].sum())
    seconds = time.perf_counter() - t0
    n = len(data)
    if distributed.active():
        correct, tokens, computed, depth_sum, n = distributed.sum_([correct, tokens, computed, depth_sum, n])
        seconds = max(distributed.gather_objects(seconds))
        preds = [p for part in distributed.gather_objects(preds) for p in part]  # contiguous shares, in order
    return {"accuracy": correct / max(n, 1), "avg_depth": depth_sum / max(tokens, 1),
            "token_layer_fraction": computed / max(tokens * model.num_layers, 1),
            "samples_per_s": n / seconds, "predictions": preds}


def build_model(model_path: str | None, num_labels: int, layers: int, halting: bool, dropout: float = 0.1):
    from .pretrained import load_pretrained, truncate_layers

    bert, tokenizer = load_pretrained(model_path)
    truncate_layers(bert, layers)
    return AdaptiveClassifier(bert, num_labels, dropout=dropout, halting=halting), tokenizer


# Checkpoints: a transformers-format folder (adaptive_encoder/checkpoint.py).
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402,F401
