"""A data collator for transformers' Trainer that carries a per-token `depths` column.

transformers' own collators pad only the tokenizer's columns, and Trainer drops every
column its model's forward does not name (`depths` travels in **kwargs). So:

    args = TrainingArguments(..., remove_unused_columns=False)
    Trainer(model, args, train_dataset=ds, data_collator=DepthCollator(tokenizer))

where each example has `input_ids` and `depths` (a list as long as `input_ids`, ints in
[0, N]). The batch's `depths` is a (B, T) int64 tensor padded with 0 (padding positions are
never computed), passed by Trainer as `model(**batch)` and so to the patched encoder.
"""
from dataclasses import dataclass

import torch


@dataclass
class DepthCollator:
    tokenizer: object
    depth_key: str = "depths"
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list) -> dict:
        if not features:
            raise ValueError("DepthCollator: empty batch")
        depths = []
        for i, f in enumerate(features):
            if self.depth_key not in f:
                raise KeyError(f"DepthCollator: example {i} has no {self.depth_key!r} column "
                               "(did Trainer drop it? set remove_unused_columns=False)")
            d = list(f[self.depth_key])
            if len(d) != len(f["input_ids"]):
                raise ValueError(f"DepthCollator: example {i} has {len(d)} depths for {len(f['input_ids'])} tokens")
            depths.append(d)
        rest = [{k: v for k, v in f.items() if k != self.depth_key} for f in features]
        batch = self.tokenizer.pad(rest, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors="pt")
        T = batch["input_ids"].shape[1]
        right = getattr(self.tokenizer, "padding_side", "right") == "right"
        out = torch.zeros(len(depths), T, dtype=torch.int64)
        for i, d in enumerate(depths):
            if right:
                out[i, :len(d)] = torch.as_tensor(d, dtype=torch.int64)
            else:
                out[i, T - len(d):] = torch.as_tensor(d, dtype=torch.int64)
        batch[self.depth_key] = out
        return batch
