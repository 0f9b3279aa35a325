"""AdaptiveClassifier, halting baseline and trainer."""
import pytest
import torch
import torch.nn.functional as F

from adaptive_encoder.classifier import AdaptiveClassifier, halting_pseudo_labels, pool
from adaptive_encoder.train import Encoded, TrainConfig, batches, evaluate, train
from conftest import needs_minilm, small_bert_config


def _model(halting=False, seed=0, layers=3):
    from transformers import BertModel

    torch.manual_seed(seed)
    return AdaptiveClassifier(BertModel(small_bert_config(layers=layers)), num_labels=3, halting=halting)


def _data(n=24, seed=0, depths=True, layers=3):
    gen = torch.Generator().manual_seed(seed)
    ids, labels, ds = [], [], []
    for i in range(n):
        T = int(torch.randint(3, 12, (1,), generator=gen))
        y = i % 3
        seq = torch.randint(5, 120, (T,), generator=gen)
        seq[1] = 100 + y  # a label-revealing token, so a few steps can learn something
        ids.append([1] + seq.tolist() + [2])
        labels.append(y)
        ds.append(torch.randint(1, layers + 1, (T + 2,), generator=gen))
    return Encoded(ids, labels, ds if depths else None)


def _loss(model, data):
    model.eval()
    with torch.no_grad():
        tot = 0.0
        for ids, mask, d, y in batches(data, 64, pad_id=0):
            tot += F.cross_entropy(model(ids, mask, d).logits, y, reduction="sum").item()
    return tot / len(data)


@pytest.mark.parametrize("variant", ["fixed", "mi", "reconstruction", "halting"])
def test_few_training_steps_lower_the_loss(variant):
    model = _model(halting=variant == "halting")
    data = _data(depths=variant in ("mi", "reconstruction"))
    before = _loss(model, data)
    hist = train(model, data, TrainConfig(lr=1e-3, epochs=4, batch_size=8, halting_epochs=2), pad_id=0)
    assert hist["losses"] and all(torch.isfinite(torch.tensor(hist["losses"])))
    # halting: stage 1 on 22 of 24 examples (3 batches x 4 epochs), stage 2 on the 2 held out (1 x 2).
    assert len(hist["losses"]) == (12 + 2 if variant == "halting" else 3 * 4)
    assert _loss(model, data) < before


def test_pooling_ignores_padding():
    states = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    a = pool(states, mask)
    poisoned = states.clone()
    poisoned[0, 3:] = 1e6
    b = pool(poisoned, mask)
    torch.testing.assert_close(a, b)
    expect0 = F.relu(torch.cat([states[0, :3].amax(0), states[0, :3].mean(0)]))
    torch.testing.assert_close(a[0], expect0)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_left_and_right_padding_give_the_same_logits(family):
    """A text's logits do not depend on its padding side (a transformers pipeline pads on the
    tokenizer's side): BERT-style positions are counted over real tokens, and right padding
    keeps the embeddings transformers makes (positions 0..len-1)."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "bert":
        bert = tf.BertModel(small_bert_config(layers=3))
    else:
        bert = tf.MPNetModel(tf.MPNetConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                            intermediate_size=48, vocab_size=120, max_position_embeddings=64))
    model = AdaptiveClassifier(bert, num_labels=3, halting=True).eval()
    pad = bert.config.pad_token_id
    ids = torch.randint(5, 120, (3, 9))
    right = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 3 + [0] * 6])
    ids_r = torch.where(right.bool(), ids, pad)
    depths_r = torch.randint(1, 4, (3, 9)) * right
    # The same texts padded on the left: each row's real tokens moved to its end.
    ids_l, left, depths_l = (torch.stack([t.roll(int((1 - m).sum())) for t, m in zip(x, right)])
                             for x in (ids_r, right, depths_r))
    with torch.no_grad():
        for depths in ((depths_r, depths_l), (None, None)):
            a = model(ids_r, right, depths[0])
            b = model(ids_l, left, depths[1])
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.layer_logits(ids_r, right), model.layer_logits(ids_l, left),
                                   rtol=1e-5, atol=1e-5)
        # Right padding: the embeddings transformers makes, on the real tokens.
        m = right.bool()
        torch.testing.assert_close(model.embed(ids_r, right)[m], bert.embeddings(input_ids=ids_r)[m])


def test_halting_pseudo_labels_hand_case():
    # 3 layers, 4 examples, label 0 everywhere; logits favour class (0 correct / 1 wrong).
    right, wrong = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    pattern = [  # per example: correct at layers 1..3?
        (True, True, True),    # -> 1
        (False, True, True),   # -> 2
        (True, False, True),   # -> 3 (layer 1 right but not stable)
        (True, True, False),   # -> 3 (deepest wrong: use every layer)
    ]
    logits = torch.stack([torch.stack([right if p[n] else wrong for p in pattern]) for n in range(3)])
    assert halting_pseudo_labels(logits, torch.zeros(4, dtype=torch.long)).tolist() == [1, 2, 3, 3]


def test_halting_unit_depths_are_valid_and_cost_counted():
    model = _model(halting=True).eval()
    data = _data(depths=False)
    ids, mask, _, _ = next(batches(data, 8, pad_id=0))
    with torch.no_grad():
        out = model(ids, mask)
    real = mask != 0
    assert out.depths.dtype == torch.int64
    assert ((out.depths[real] >= 1) & (out.depths[real] <= 3)).all() and (out.depths[~real] == 0).all()
    # layer 1 runs on every real token; layers 2..N on those the unit keeps.
    expect = int(real.sum()) + sum(int((real & (out.depths > n)).sum()) for n in range(1, 3))
    assert out.computed_token_layers == expect


def test_evaluate_reports_depth_and_fraction():
    model = _model()
    data = _data()
    ev = evaluate(model, data, pad_id=0)
    all_d = torch.cat(data.depths).float()
    assert ev["avg_depth"] == pytest.approx(all_d.mean().item())
    assert 0 < ev["token_layer_fraction"] < 1 and 0 <= ev["accuracy"] <= 1 and ev["samples_per_s"] > 0


@needs_minilm
def test_checkpoint_round_trip_identical_predictions(tmp_path):
    from adaptive_encoder.train import build_model, load_checkpoint, save_checkpoint

    model, tok = build_model(None, num_labels=3, layers=2, halting=True)
    data = _data(n=12, depths=False, layers=2)
    data = Encoded([[tok.cls_token_id] + [min(i, 30000) for i in s[1:-1]] + [tok.sep_token_id] for s in data.ids],
                   data.labels, None)
    train(model, data, TrainConfig(lr=1e-4, epochs=1, batch_size=6), pad_id=tok.pad_token_id)
    meta = {"model_path": None, "num_labels": 3, "layers": 2, "halting": True, "dropout": 0.1}
    path = tmp_path / "ck"
    save_checkpoint(str(path), model, meta, tok)
    files = sorted(p.name for p in path.iterdir())
    assert {"config.json", "model.safetensors", "adaptive_head.safetensors", "adaptive_config.json",
            "tokenizer_config.json"} <= set(files), files
    back, _, meta2 = load_checkpoint(str(path))
    assert meta2 == {"format": 2, **meta}
    from transformers import AutoModel  # the encoder is a plain transformers checkpoint
    assert AutoModel.from_pretrained(str(path)).config.num_hidden_layers == 2
    a = evaluate(model, data, tok.pad_token_id)["predictions"]
    ids, mask, _, _ = next(batches(data, 12, tok.pad_token_id))
    with torch.no_grad():
        la, lb = model(ids, mask), back(ids, mask)
    assert torch.equal(la.logits, lb.logits) and torch.equal(la.depths, lb.depths)
    assert evaluate(back, data, tok.pad_token_id)["predictions"] == a


def test_halting_threshold_rule():
    model = _model(halting=True)
    # P(depth) = (0.6, 0.25, 0.15): argmax says 1; cumulative 0.6, 0.85, 1.0.
    logits = torch.log(torch.tensor([[0.6, 0.25, 0.15]]))
    assert model.halting_depths(logits).tolist() == [3]          # 0.9 needs depth 3
    model.halting_threshold = 0.5
    assert model.halting_depths(logits).tolist() == [1]
    model.halting_threshold = 0.8
    assert model.halting_depths(logits).tolist() == [2]
    with pytest.raises(ValueError, match="halting_threshold"):
        AdaptiveClassifier(model.bert, 3, halting=True, halting_threshold=0.0)


@needs_minilm
def test_old_pickled_checkpoint_loads_with_deprecation_and_converts(tmp_path):
    import warnings

    from adaptive_encoder.__main__ import main
    from adaptive_encoder.train import build_model, load_checkpoint

    model, tok = build_model(None, num_labels=3, layers=2, halting=False)
    meta = {"model_path": None, "num_labels": 3, "layers": 2, "halting": False, "dropout": 0.1, "dataset": "trec",
            "variant": "fixed", "config": {"max_length": 64}, "limit": 0}
    old = tmp_path / "old.pt"
    torch.save({"meta": meta, "state_dict": model.state_dict()}, old)  # the format before 2026-11-26
    with pytest.warns(DeprecationWarning, match="convert-checkpoint"):
        back, _, _ = load_checkpoint(str(old))
    assert main(["convert-checkpoint", str(old), str(tmp_path / "new")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new, _, meta2 = load_checkpoint(str(tmp_path / "new"))
    ids = torch.tensor([[tok.cls_token_id, 2000, 2003, tok.sep_token_id]])
    with torch.no_grad():
        assert torch.equal(back(ids, torch.ones_like(ids)).logits, new(ids, torch.ones_like(ids)).logits)
    assert meta2["variant"] == "fixed"


@needs_minilm
def test_mi_checkpoint_runs_in_a_transformers_pipeline(tmp_path):
    from transformers import pipeline

    from adaptive_encoder.checkpoint import mi_table, pipeline_model, save_checkpoint
    from adaptive_encoder.train import build_model

    model, tok = build_model(None, num_labels=6, layers=2, halting=False)
    meta = {"model_path": None, "num_labels": 6, "layers": 2, "halting": False, "dropout": 0.1, "dataset": "trec",
            "variant": "mi", "config": {"max_length": 64}, "limit": 300}
    table = mi_table(meta, tok)
    save_checkpoint(str(tmp_path / "mi"), model.eval(), meta, tok, table)
    pm, ptok = pipeline_model(str(tmp_path / "mi"))
    texts = ["how far is it from denver to aspen ?", "who was galileo ?"]
    out = pipeline("text-classification", model=pm, tokenizer=ptok)(texts)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = model(enc["input_ids"], enc["attention_mask"], table(enc["input_ids"], enc["attention_mask"]))
    assert [o["label"] for o in out] == [f"LABEL_{i}" for i in direct.logits.argmax(-1).tolist()]
    assert (direct.depths[enc["attention_mask"].bool()] < 2).any()  # MI depths were used, not all N
    recon = {**meta, "variant": "reconstruction"}
    save_checkpoint(str(tmp_path / "rc"), model, recon, tok)
    with pytest.raises(ValueError, match="reconstruction checkpoint cannot run in a pipeline"):
        pipeline_model(str(tmp_path / "rc"))
