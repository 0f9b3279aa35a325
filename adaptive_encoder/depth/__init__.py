"""Depth estimation in advance (no halting unit): MI (supervised) and reconstruction (unsupervised)."""
from .mi import MIDepthEstimator, TokenDepthLookup, lookup_table
from .pipeline import texts_to_words, tokenizer_words
from .reconstruction import AnytimeMLM, depths_from_losses, loss_tables, table_depths, train_anytime_mlm

__all__ = ["MIDepthEstimator", "TokenDepthLookup", "lookup_table", "AnytimeMLM", "depths_from_losses",
           "loss_tables", "table_depths", "train_anytime_mlm", "texts_to_words", "tokenizer_words"]
