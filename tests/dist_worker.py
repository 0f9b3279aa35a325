"""Run by tests/test_distributed.py, alone or under torchrun (2 CPU processes, gloo).

    python tests/dist_worker.py train OUT.json      one short training run: losses + final weights
    python tests/dist_worker.py mi OUT.json         MI table fitted on this rank's share of docs
    python tests/dist_worker.py mi_depths OUT.json  the pipeline's MI depths, every rank holding all texts
    python tests/dist_worker.py recon OUT.json      reconstruction depths written to OUT.json.d/, work shared
    python tests/dist_worker.py recon_own OUT.json  loss tables of each rank's own texts: refused on every rank
    python tests/dist_worker.py die OUT.json        rank 1 exits at once, rank 0 waits in a collective
"""
import json
import sys

import torch
from transformers import BertConfig, BertModel

from adaptive_encoder import distributed
from adaptive_encoder.classifier import AdaptiveClassifier
from adaptive_encoder.depth.mi import MIDepthEstimator
from adaptive_encoder.train import Encoded, TrainConfig, train


def data(n=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids, labels, depths = [], [], []
    for _ in range(n):
        T = int(torch.randint(3, 12, (1,), generator=gen))
        ids.append(torch.randint(5, 100, (T,), generator=gen).tolist())
        depths.append(torch.randint(1, 4, (T,), generator=gen).tolist())
        labels.append(int(torch.randint(0, 3, (1,), generator=gen)))
    return Encoded(ids, labels, depths)


def run_train(halting: bool):
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                     vocab_size=100, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = AdaptiveClassifier(BertModel(cfg), 3, dropout=0.0, halting=halting)
    hist = train(model, data(), TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0, halting_epochs=1), pad_id=0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"losses": hist["losses"], "params": flat.tolist()}


def mi_docs(n=60):
    gen = torch.Generator().manual_seed(1)
    docs = [[f"w{int(w)}" for w in torch.randint(0, 40, (int(torch.randint(2, 9, (1,), generator=gen)),),
                                                   generator=gen)] for _ in range(n)]
    return docs, [int(torch.randint(0, 3, (1,), generator=gen)) for _ in docs]


def run_mi():
    docs, labels = mi_docs()
    r, W = distributed.rank(), distributed.world_size()
    est = MIDepthEstimator(4).fit(docs[r::W], labels[r::W])  # this rank's share only
    return {"mi": est.mi, "word_depth": est.word_depth}


def tiny_tokenizer():
    import tempfile

    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        with open(f"{folder}/vocab.txt", "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]) + "\n")
        return BertTokenizerFast(f"{folder}/vocab.txt")


def run_mi_depths():
    """What `train --depth mi` and `evaluate` do: every rank loaded the whole training split."""
    from types import SimpleNamespace

    from adaptive_encoder.depth.pipeline import mi_depths

    docs, labels = mi_docs()
    texts = [" ".join(d) for d in docs]
    est, depths = mi_depths({"train": SimpleNamespace(texts=texts, labels=labels)}, tiny_tokenizer(), 4)
    return {"mi": est.mi, "word_depth": est.word_depth, "depths": [d.tolist() for d in depths["train"]]}


def run_recon(out_dir):
    """What `estimate-depths --method reconstruction` and `--estimate-missing` do: the tiny
    anytime MLM trained data parallel, the loss tables shared between the ranks, rank 0 writes."""
    import os
    from types import SimpleNamespace

    from adaptive_encoder.depth import reconstruction
    from adaptive_encoder.depth.pipeline import estimate_reconstruction

    computed, real = [], reconstruction._chunk_losses
    reconstruction._chunk_losses = lambda *a: computed.append(len(a[-1])) or real(*a)  # copies this rank ran
    docs, labels = mi_docs(150)  # ~600 training tokens: chunks of 256 copies on both ranks
    texts = [" ".join(d) for d in docs]
    splits = {"train": SimpleNamespace(texts=texts[:120], labels=labels[:120]),
              "test": SimpleNamespace(texts=texts[120:], labels=labels[120:])}
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                vocab_size=45, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))  # dropout draws differ between layouts
    saved, losses, tables = estimate_reconstruction(splits, bert, tiny_tokenizer(), out_dir, steps=4, max_length=32)
    mlm = torch.load(os.path.join(out_dir, "anytime_mlm.pt"))
    return {"depths": {k: [d.tolist() for d in v] for k, v in saved["depths"].items()},
            "tables": {k: [t.nan_to_num(-1.0).tolist() for t in v] for k, v in tables.items()},
            "mlm": torch.cat([p.flatten() for p in mlm.values()]).tolist(), "losses": losses,
            "computed": distributed.gather_objects(sum(computed)),
            "files": sorted(os.path.relpath(os.path.join(d, f), out_dir)
                            for d, _, fs in os.walk(out_dir) for f in fs)}


def run_recon_own_texts():
    from adaptive_encoder.depth.reconstruction import AnytimeMLM, loss_tables

    docs, _ = mi_docs()
    torch.manual_seed(0)
    mlm = AnytimeMLM(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=48, vocab_size=45, max_position_embeddings=32)))
    r, W = distributed.rank(), distributed.world_size()
    try:
        loss_tables(mlm, tiny_tokenizer(), [" ".join(d) for d in docs[r::W]], chunk=16)
        error = None
    except ValueError as e:
        error = str(e)
    return {"errors": distributed.gather_objects(error)}


if __name__ == "__main__":
    distributed.init_from_env()
    what, out = sys.argv[1], sys.argv[2]
    if what == "die":
        if distributed.rank() == 1:
            sys.exit(3)  # a rank that dies before its collective
        distributed.sum_([1.0])  # rank 0 would wait here for ever without timeouts / torchrun
        sys.exit(0)
    result = {"train": lambda: run_train(False), "halting": lambda: run_train(True), "mi": run_mi,
              "mi_depths": run_mi_depths, "recon": lambda: run_recon(out + ".d"),
              "recon_own": run_recon_own_texts}[what]()
    if distributed.is_main():
        with open(out, "w") as f:
            json.dump({"world": distributed.world_size(), **result}, f)
    distributed.shutdown()
