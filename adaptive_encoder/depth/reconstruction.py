"""Depths from reconstruction loss (unsupervised): an anytime masked LM.

AnytimeMLM: a BERT encoder with ONE masked-LM head shared by every layer (decoder tied to
the word embeddings), trained with the sum over layers of the MLM losses, BERT-style
masking (15 % of real tokens: 80 % [MASK], 10 % random, 10 % kept), no next-sentence task.

Depth of token t: mask t alone, read each layer's loss on it, and take
    d = argmin_n (loss_n + lam * n),  n = 1..N,  lam = 0.1 by default.
The paper prints "- lam * n", but says the penalty encourages shallower layers and its
table shows a larger lam giving a lower average depth, which only "+ lam * n" does; we
implement "+". [CLS]/[SEP] get the largest depth of their sequence, padding 0 (as the MI
estimator does).

Loss tables (one (T, N) table per text, NaN at special tokens) are cached on disk, keyed by
the model weights, texts and max length; depths for any lam are computed from them. The
trained MLM is cached beside them (cached_anytime_mlm), so an interrupted estimate resumes
without training again.
"""
import glob
import hashlib
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class AnytimeMLM(nn.Module):
    """bert: a transformers BertModel. forward -> per-layer mean MLM loss (N,) over masked tokens."""

    def __init__(self, bert):
        super().__init__()
        cfg = bert.config
        self.bert = bert
        self.num_layers = cfg.num_hidden_layers
        self.transform = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.GELU(),
                                       nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) states of any layer -> (..., V) vocabulary logits (decoder tied to embeddings)."""
        return F.linear(self.transform(h), self.bert.embeddings.word_embeddings.weight, self.bias)

    def layer_states(self, input_ids, attention_mask) -> list:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return list(out.hidden_states[1:])  # layers 1..N, each (B, T, D)

    def forward(self, input_ids, attention_mask, labels, reduction: str = "mean") -> torch.Tensor:
        """labels (B,T): original id at masked positions, -100 elsewhere. Returns (N,) losses,
        each layer's mean (or with reduction="sum", sum) over the masked tokens."""
        where = labels != -100
        target = labels[where]
        return torch.stack([F.cross_entropy(self.logits(h[where]), target, reduction=reduction) for h in
                            self.layer_states(input_ids, attention_mask)])


def mask_tokens(input_ids, attention_mask, special_mask, mask_id: int, vocab_size: int,
                prob: float = 0.15, generator=None):
    """BERT masking. Returns (masked input_ids, labels with -100 at unmasked positions)."""
    can = (attention_mask != 0) & ~special_mask
    pick = (torch.rand(input_ids.shape, generator=generator) < prob) & can
    # At least one target per sequence that has any real word, so every batch has a loss.
    none = ~pick.any(1) & can.any(1)
    if none.any():
        first = can.float().argmax(1)
        pick[none, first[none]] = True
    labels = torch.where(pick, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    ids = input_ids.clone()
    ids[pick & (roll < 0.8)] = mask_id
    rand = pick & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = torch.randint(vocab_size, (int(rand.sum()),), generator=generator)
    return ids, labels


def train_anytime_mlm(model: AnytimeMLM, tokenizer, texts, steps: int, batch_size: int = 32,
                      lr: float = 5e-5, max_length: int = 128, seed: int = 0, progress: bool = False) -> list:
    """Train on `texts` for `steps` steps; returns the summed (over layers) loss per step.

    Data parallel under torch.distributed (every rank passes the same texts): each rank draws
    the whole batch and its masks from the seeded generator, as one process does, and runs
    rows r, r+W, ... of it under DistributedDataParallel, with its masked tokens' summed loss
    x W / the batch's masked-token count, so the averaged gradient is the 1-process one."""
    from tqdm.auto import tqdm

    from .. import distributed

    rank, world = distributed.rank(), distributed.world_size()
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world} ranks sharing each batch")
    net = distributed.data_parallel(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    device = next(model.parameters()).device  # the masks are drawn on the CPU (the same on any device)
    for _ in tqdm(range(steps), desc="anytime MLM", disable=not progress):
        idx = torch.randint(len(texts), (batch_size,), generator=gen).tolist()
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt", return_special_tokens_mask=True)
        ids, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"].bool(),
                                  tokenizer.mask_token_id, len(tokenizer), generator=gen)
        count = int((labels != -100).sum())  # the whole batch's masked tokens
        mine = slice(rank, None, world)
        share = (net(ids[mine].to(device), enc["attention_mask"][mine].to(device), labels[mine].to(device),
                     reduction="sum") / count).sum()
        loss = share * world  # one process: exactly the sum of the per-layer means
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(distributed.sum_([share.item()])[0])
    model.eval()
    return losses


def depths_from_losses(losses: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """losses (..., N) per-layer loss -> (...) int64 depth in 1..N = argmin_n loss_n + lam*n."""
    n = torch.arange(1, losses.shape[-1] + 1, dtype=losses.dtype, device=losses.device)
    return (losses + lam * n).argmin(-1) + 1


@torch.no_grad()
def loss_tables(model: AnytimeMLM, tokenizer, texts, max_length: int = 128, chunk: int = 256,
                progress: bool = False, partial: str | None = None, save_every_s: float = 120.0) -> list:
    """One (T_i, N) float32 table per text: layer losses of each token masked alone; NaN rows
    at special tokens. Single-mask copies of many texts share each forward, `chunk` copies
    at a time (bounded memory); texts are processed shortest first to limit padding.

    Under torch.distributed every rank passes the same model and texts: chunk k is computed
    by rank k % W and every rank returns all the tables. A chunk holds the same copies
    whatever W is, so the tables are the ones one process computes.

    partial: a path prefix that makes the job resumable. Each rank writes the chunks it has
    finished to <partial>.rank<r>.pt every `save_every_s` seconds and at its end; a rerun,
    with any number of ranks, skips every chunk found in such files of the same job. The
    caller removes them once it has kept the result (remove_partials)."""
    from tqdm.auto import tqdm

    from .. import distributed

    model.eval()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    ids_list, special = enc["input_ids"], enc["special_tokens_mask"]
    jobs = [(i, t) for i in sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
            for t in range(len(ids_list[i])) if not special[i][t]]
    chunks = [jobs[start:start + chunk] for start in range(0, len(jobs), chunk)]
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1:  # shares of one job, so every rank must hold the same one (not its own texts)
        digest = hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()
        if len(set(distributed.gather_objects((digest, len(jobs), chunk, model.num_layers)))) > 1:
            raise ValueError("loss_tables under torch.distributed: the ranks passed different texts (or chunk "
                             "sizes, or models of other depths); every rank passes the same ones and gets "
                             "all the tables, the work being shared")
    mine = [k for k in range(len(chunks)) if k % world == rank]
    job = {"jobs": len(jobs), "chunk": chunk, "layers": model.num_layers}
    done = {k: v for k, v in _read_partials(partial, job).items() if k % world == rank}
    bar = tqdm(total=sum(len(chunks[k]) for k in mine), initial=sum(len(chunks[k]) for k in done),
               desc="reconstruction depths", unit="tok", disable=not (progress and distributed.is_main()))
    saved_at, unsaved = time.monotonic(), False
    for k in mine:
        if k in done:
            continue
        done[k] = _chunk_losses(model, tokenizer, ids_list, chunks[k])
        unsaved = True
        bar.update(len(chunks[k]))
        if partial and time.monotonic() - saved_at >= save_every_s:
            distributed.save_atomically({**job, "done": done}, f"{partial}.rank{rank}.pt")
            saved_at, unsaved = time.monotonic(), False
    if partial and unsaved:
        distributed.save_atomically({**job, "done": done}, f"{partial}.rank{rank}.pt")
    bar.close()
    for part in distributed.gather_objects(done):
        done.update(part)
    tables = [torch.full((len(ids), model.num_layers), float("nan")) for ids in ids_list]
    for k, part in enumerate(chunks):
        for r, (i, t) in enumerate(part):
            tables[i][t] = done[k][r]
    return tables


def _chunk_losses(model: AnytimeMLM, tokenizer, ids_list, part) -> torch.Tensor:
    """(copies, N) float32 layer losses (on the CPU) of the (text, position) copies in `part`, each
    masked alone; the model runs on its own device."""
    T = max(len(ids_list[i]) for i, _ in part)
    ids = torch.full((len(part), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(part), T), dtype=torch.long)
    for r, (i, t) in enumerate(part):
        ids[r, :len(ids_list[i])] = torch.tensor(ids_list[i])
        mask[r, :len(ids_list[i])] = 1
    rows = torch.arange(len(part))
    pos = torch.tensor([t for _, t in part])
    target = ids[rows, pos].clone()
    ids[rows, pos] = tokenizer.mask_token_id
    device = next(model.parameters()).device
    states = model.layer_states(ids.to(device), mask.to(device))
    rows, pos, target = rows.to(device), pos.to(device), target.to(device)
    return torch.stack([F.cross_entropy(model.logits(h[rows, pos]), target, reduction="none")
                        for h in states], dim=1).float().cpu()


def _read_partials(partial: str | None, job: dict) -> dict:
    """{chunk: losses} from every rank's partial file of this job (other chunk sizes ignored)."""
    done = {}
    for path in sorted(glob.glob(f"{glob.escape(partial)}.rank*.pt")) if partial else ():
        saved = torch.load(path)
        if all(saved.get(key) == value for key, value in job.items()):
            done.update(saved["done"])
    return done


def remove_partials(partial: str) -> None:
    for path in glob.glob(f"{glob.escape(partial)}.rank*.pt"):
        os.remove(path)


def table_depths(table: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """(T, N) loss table with NaN rows at special tokens -> (T,) depths; specials get the max."""
    special = table.isnan().all(1)
    d = depths_from_losses(table.nan_to_num(0.0), lam)
    word = d[~special]
    d[special] = int(word.max()) if word.numel() else table.shape[1]
    return d


def cache_key(model: nn.Module, texts, max_length: int) -> str:
    # Every byte of every tensor: a float sum as a fingerprint was not deterministic (torch's
    # CPU reduction order depends on the thread count), so the same weights missed the cache.
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(p.dtype).encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def cpu_state(model: nn.Module) -> dict:
    """The model's state dict on the CPU: what is saved, so that the file loads on any machine."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def cached_anytime_mlm(model: AnytimeMLM, tokenizer, texts, cache_dir: str, steps: int, batch_size: int = 32,
                       lr: float = 5e-5, max_length: int = 128, seed: int = 0, progress: bool = False) -> list:
    """train_anytime_mlm, done once per (initial weights, texts, max_length, steps, batch_size,
    lr, seed): the trained weights and the losses are kept in cache_dir (anytime_mlm_<key>.pt),
    and a rerun loads them into `model` instead of training again. Why: the loss tables' cache
    and their resumable partial files are keyed by the trained weights' bytes, which a second
    training does not reproduce with another number of ranks or threads (another summation
    order), so without this a resumed estimate would retrain and then miss every finished chunk.
    Under torch.distributed every rank loads or trains (data parallel) and rank 0 writes."""
    from .. import distributed

    h = hashlib.sha1(cache_key(model, texts, max_length).encode())
    h.update(f"steps={steps} batch_size={batch_size} lr={lr!r} seed={seed}".encode())
    path = os.path.join(cache_dir, f"anytime_mlm_{h.hexdigest()[:16]}.pt")
    if distributed.everywhere(os.path.exists(path)):
        saved = torch.load(path)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return saved["losses"]
    losses = train_anytime_mlm(model, tokenizer, texts, steps=steps, batch_size=batch_size, lr=lr,
                               max_length=max_length, seed=seed, progress=progress)
    if distributed.is_main():
        os.makedirs(cache_dir, exist_ok=True)
        distributed.save_atomically({"state_dict": cpu_state(model), "losses": losses}, path)
    distributed.barrier()
    return losses


def cached_loss_tables(model, tokenizer, texts, cache_dir, max_length: int = 128, chunk: int = 256,
                       progress: bool = False) -> list:
    """loss_tables, computed once per (model weights, texts, max_length) and kept in cache_dir;
    resumable (an interrupted run's finished chunks are kept there until the table is written).
    Under torch.distributed the ranks share the work and rank 0 writes the file."""
    from .. import distributed

    path = os.path.join(cache_dir, f"loss_tables_{cache_key(model, texts, max_length)}.pt")
    if distributed.everywhere(os.path.exists(path)):
        return torch.load(path)
    os.makedirs(cache_dir, exist_ok=True)
    partial = path[:-len(".pt")] + ".partial"
    tables = loss_tables(model, tokenizer, texts, max_length=max_length, chunk=chunk, progress=progress,
                         partial=partial)
    if distributed.is_main():
        distributed.save_atomically(tables, path)
        remove_partials(partial)
    distributed.barrier()
    return tables
