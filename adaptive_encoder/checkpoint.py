"""Classifier checkpoints in transformers format, and loading them into a transformers pipeline.

A checkpoint is a folder:
    config.json, model.safetensors    the encoder, `save_pretrained` (loads with AutoModel)
    tokenizer files                   `tokenizer.save_pretrained`
    adaptive_head.safetensors         the pooling classifier's head (and halting unit)
    adaptive_config.json              variant, dataset, N, labels, training config
    depth_table.json                  MI checkpoints: the token -> depth table (TokenDepthLookup)

`load_checkpoint(folder)` rebuilds the AdaptiveClassifier; `pipeline_model(folder)` gives a
module that a transformers text-classification pipeline runs (depths from the table for MI,
the unit for halting, N for fixed). Old single-file pickled checkpoints (`*.pt`) still load,
with a DeprecationWarning naming the one-line conversion:
`python -m adaptive_encoder convert-checkpoint OLD.pt NEW_DIR`.
"""
import json
import os
import warnings

import torch
from torch import nn

from . import distributed

HEAD_FILE, CONFIG_FILE = "adaptive_head.safetensors", "adaptive_config.json"


def save_checkpoint(path: str, model, meta: dict, tokenizer=None, depth_table=None) -> None:
    """Write the folder `path` (rank 0 only under torchrun). meta: num_labels, layers, halting,
    dropout, dataset, variant, config, limit, model_path."""
    if not distributed.is_main():
        return
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    model.bert.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    head = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.split(".")[0] in ("head", "halting")}
    save_file(head, os.path.join(path, HEAD_FILE))
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump({"format": 2, **meta}, f, indent=1)
    if depth_table is not None:
        depth_table.save(path)


def read_meta(path: str) -> dict:
    """The checkpoint's meta (variant, dataset, layers, config, ...) without loading its model
    (an old pickled `.pt` file is read whole)."""
    if os.path.isfile(path):
        return torch.load(path, weights_only=False)["meta"]
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(f"{path} is not a checkpoint (no {CONFIG_FILE} there, and not a .pt file)")
    with open(os.path.join(path, CONFIG_FILE)) as f:
        return json.load(f)


def load_checkpoint(path: str):
    """(AdaptiveClassifier in eval mode, tokenizer, meta) from a checkpoint folder, or from an
    old pickled `.pt` file (deprecated)."""
    from .classifier import AdaptiveClassifier

    if os.path.isfile(path):
        warnings.warn(f"{path} is an old pickled checkpoint; convert it once with `python -m adaptive_encoder "
                      f"convert-checkpoint {path} NEW_DIR` (transformers format)", DeprecationWarning, stacklevel=2)
        from .train import build_model

        ckpt = torch.load(path, weights_only=False)
        meta = ckpt["meta"]
        model, tokenizer = build_model(meta.get("model_path"), meta["num_labels"], meta["layers"],
                                       meta["halting"], meta.get("dropout", 0.1))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval(), tokenizer, meta
    meta = read_meta(path)
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    bert = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AdaptiveClassifier(bert, meta["num_labels"], dropout=meta.get("dropout", 0.1), halting=meta["halting"])
    missing = model.load_state_dict(load_file(os.path.join(path, HEAD_FILE)), strict=False)
    if missing.unexpected_keys or any(k.split(".")[0] in ("head", "halting") for k in missing.missing_keys):
        raise ValueError(f"{path}/{HEAD_FILE} does not match the classifier: {missing}")
    return model.eval(), tokenizer, meta


def convert(old: str, new: str) -> None:
    """Rewrite an old pickled checkpoint as a checkpoint folder (MI: with its depth table)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model, tokenizer, meta = load_checkpoint(old)
    table = mi_table(meta, tokenizer) if meta["variant"] == "mi" else None
    save_checkpoint(new, model, meta, tokenizer, table)


def mi_estimator(meta: dict, tokenizer, data_root=None, checkpoint: str | None = None):
    """The MIDepthEstimator of an MI checkpoint, refitted on its training data (deterministic).
    With `checkpoint` (its folder), the refit is checked against the depth table saved there."""
    from .data import load_dataset
    from .depth.mi import MIDepthEstimator
    from .depth.pipeline import tokenizer_words

    train = load_dataset(meta["dataset"], root=data_root)["train"]
    if meta.get("limit"):
        train = train.subset(range(min(meta["limit"], len(train))))
    words = [tokenizer_words(tokenizer, t) for t in train.texts]
    est = MIDepthEstimator(meta["layers"]).fit_replicated(words, train.labels)  # every rank loaded it all
    if checkpoint is not None:
        check_mi_refit(checkpoint, est, tokenizer)
    return est


def check_mi_refit(checkpoint: str, est, tokenizer) -> None:
    """Refuse MI depths refitted on other training data than the checkpoint's (another --data
    folder, an edited dataset): the refit's token table must equal the checkpoint's
    depth_table.json, else every depth would silently differ from the ones it was trained with.
    Old checkpoints without a table (.pt files) are not checked."""
    from .depth.mi import TokenDepthLookup, lookup_table

    if not os.path.isfile(os.path.join(checkpoint, TokenDepthLookup.FILE)):
        return
    saved = TokenDepthLookup.load(checkpoint)
    refit = lookup_table(est, tokenizer)
    if saved.num_layers != est.num_layers or not torch.equal(saved.table, refit):
        differ = int((saved.table != refit).sum()) if saved.table.shape == refit.shape else "all"
        raise distributed.InputError(f"MI depths refitted on this training data differ from the checkpoint's "
                                     f"({checkpoint}/{TokenDepthLookup.FILE}: {differ} of {refit.numel()} tokens): "
                                     f"the dataset is not the one it was trained on (--data, or an edited file)")


def mi_table(meta: dict, tokenizer, data_root=None):
    """The TokenDepthLookup of an MI checkpoint (see mi_estimator)."""
    from .depth.mi import TokenDepthLookup

    return TokenDepthLookup.from_estimator(mi_estimator(meta, tokenizer, data_root), tokenizer)


class PipelineModel(nn.Module):
    """What a transformers text-classification pipeline needs of a model: `config`, `device`,
    `dtype` and forward(input_ids, attention_mask, ...) -> an output with `logits`."""

    def __init__(self, classifier, meta: dict, depth_table=None):
        super().__init__()
        self.classifier = classifier
        self.variant = meta["variant"]
        self.__dict__["depth_table"] = depth_table  # not a weight
        self.config = classifier.bert.config
        self.config.num_labels = meta["num_labels"]

    @property
    def device(self):
        return self.classifier.head.weight.device

    @property
    def dtype(self):
        return self.classifier.head.weight.dtype

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        depths = self.depth_table(input_ids, mask) if self.depth_table is not None else None
        return SequenceClassifierOutput(logits=self.classifier(input_ids, mask, depths).logits)


def pipeline_model(path: str):
    """(module, tokenizer) for `transformers.pipeline("text-classification", model=..., tokenizer=...)`.
    Reconstruction checkpoints are refused: their depths need the anytime MLM per text."""
    from .depth.mi import TokenDepthLookup

    model, tokenizer, meta = load_checkpoint(path)
    table = None
    if meta["variant"] == "mi":
        table = TokenDepthLookup.load(path)
    elif meta["variant"] == "reconstruction":
        raise ValueError("a reconstruction checkpoint cannot run in a pipeline: its depths come from the anytime "
                         "MLM's per-token losses; use `python -m adaptive_encoder predict --dataset ...`")
    return PipelineModel(model, meta, table).eval(), tokenizer
