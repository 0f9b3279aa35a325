"""Depth estimators: MI against hand computation, bins, lookup; reconstruction argmin, MLM training."""
import math
import time

import numpy as np
import pytest
import torch

from adaptive_encoder.depth import (AnytimeMLM, MIDepthEstimator, TokenDepthLookup, depths_from_losses,
                                    loss_tables, table_depths, train_anytime_mlm)
from adaptive_encoder.depth.reconstruction import cache_key, cached_loss_tables, mask_tokens
from conftest import HAS_MINILM, MINILM_MISSING, needs_minilm


def test_mi_matches_hand_computation():
    docs = [["a", "b"], ["a"], ["b", "c"], ["c"]]
    labels = [0, 0, 1, 1]
    est = MIDepthEstimator(num_layers=3, smoothing=0.1).fit(docs, labels)
    # "a": in both label-0 docs, no label-1 doc -> per label the 2x2 counts are (2, 0, 0, 2).
    big, small = 2.1 / 4.4, 0.1 / 4.4  # smoothed cells; both marginals are 1/2
    per_label = 2 * big * math.log(big / 0.25) + 2 * small * math.log(small / 0.25)
    assert est.mi["a"] == pytest.approx(2 * per_label, rel=1e-12)
    # "b": once in each label -> independent -> MI 0 (up to rounding) -> depth N.
    assert abs(est.mi["b"]) < 1e-12 and est.word_depth["b"] == 3
    assert est.mi["c"] == pytest.approx(est.mi["a"]) and est.word_depth["a"] == est.word_depth["c"] == 1


def _spread_corpus():
    docs, labels = [], []
    for i in range(8):
        y = i // 4
        words = ["the", "good" if y == 0 else "bad"]
        if i % 2 == 0:
            words.append("x")  # half of each label's docs: independent of the label
        if i in (0, 1, 2, 4):
            words.append("mid")  # 3 of label 0, 1 of label 1
        docs.append(words)
        labels.append(y)
    return docs, labels


def test_perfect_predictor_is_shallowest_and_spread_word_deepest():
    docs, labels = _spread_corpus()
    est = MIDepthEstimator(num_layers=4).fit(docs, labels)
    assert est.word_depth["good"] == est.word_depth["bad"] == 1
    assert est.word_depth["the"] == est.word_depth["x"] == 4
    assert 1 < est.word_depth["mid"] <= 4
    assert est.mi["good"] > est.mi["mid"] > est.mi["x"]


def test_bin_edges_and_tiny_mi_does_not_stretch_bins():
    est = MIDepthEstimator(num_layers=3)
    mi = np.array([0.5, 0.1, 0.01, 1e-16, 0.0, -1e-18])
    depth = est._bin(mi)
    scores = -np.log(mi[:3])
    np.testing.assert_allclose(est.bin_edges, np.linspace(scores.min(), scores.max(), 4))
    # 0.5 -> first bin, 0.01 -> last bin; 0.1 (score 2.30 of edges 0.69/2.01/3.30/4.61) -> bin 2.
    assert depth.tolist() == [1, 2, 3, 3, 3, 3]
    # Had the 1e-16 word (score 36.8) been binned, the three real words would all be in bin 1.
    assert est._bin(np.array([0.0, -1e-18])).tolist() == [3, 3] and est.bin_edges is None


def test_unseen_special_padding_and_save_load(tmp_path):
    docs, labels = _spread_corpus()
    est = MIDepthEstimator(num_layers=4).fit(docs, labels)
    assert est.depth_of("never-seen") == 4
    # [CLS] good mid [SEP] with word_ids None, 0, 1, None -> specials take the max word depth.
    d = est.sequence_depths(["good", "mid"], [None, 0, 1, None])
    assert d == [est.word_depth["mid"], 1, est.word_depth["mid"], est.word_depth["mid"]]
    path = tmp_path / "mi.json"
    est.save(path)
    back = MIDepthEstimator.load(path)
    assert back.mi == est.mi and back.word_depth == est.word_depth
    np.testing.assert_allclose(back.bin_edges, est.bin_edges)


def test_fit_is_vectorized_25k_docs_in_seconds():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    docs = [[vocab[j] for j in rng.zipf(1.3, 20) % 5000] for _ in range(25000)]
    labels = rng.integers(0, 2, 25000).tolist()
    t0 = time.perf_counter()
    est = MIDepthEstimator(num_layers=12).fit(docs, labels)
    assert time.perf_counter() - t0 < 10.0
    assert set(est.word_depth.values()) <= set(range(1, 13))


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one document"):
        MIDepthEstimator(3).fit([], [])
    with pytest.raises(ValueError, match="labels"):
        MIDepthEstimator(3).fit([["a"]], [0, 1])
    with pytest.raises(ValueError, match="num_layers"):
        MIDepthEstimator(0)


@pytest.fixture(scope="module")
def tokenizer():
    if not HAS_MINILM:
        pytest.skip(MINILM_MISSING)
    from adaptive_encoder.pretrained import default_model_path
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(default_model_path(), local_files_only=True)


def test_token_lookup_matches_exact_word_depths(tokenizer):
    docs, labels = _spread_corpus()
    est = MIDepthEstimator(num_layers=4).fit(docs, labels)
    look = TokenDepthLookup.from_estimator(est, tokenizer)
    # 'serfdom': 3 pieces, unseen; [] : only [CLS] [SEP], which get N like a text of unseen words
    batch = [["good", "the", "mid"], ["bad", "x"], ["the", "serfdom"], []]
    enc = tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
    exact = est.batch_depths(batch, enc)
    fast = look(enc["input_ids"], enc["attention_mask"])
    assert torch.equal(fast, exact)
    assert (fast[enc["attention_mask"] == 0] == 0).all()
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"][2])
    assert pieces[2:5] == ["ser", "##f", "##dom"] and fast[2, 2:5].tolist() == [4, 4, 4]
    assert fast[3, :2].tolist() == [4, 4]


def test_depths_from_losses_hand_case_and_lambda_monotone():
    losses = torch.tensor([3.0, 1.0, 0.95, 0.2])
    assert int(depths_from_losses(losses, 0.1)) == 4   # 3.1 1.2 1.25 0.6
    assert int(depths_from_losses(losses, 1.0)) == 2   # 4.0 3.0 3.95 4.2
    assert int(depths_from_losses(losses, 0.0)) == 4
    gen = torch.Generator().manual_seed(0)
    tables = torch.rand(500, 12, generator=gen) * 5
    prev = None
    for lam in [0.0, 0.05, 0.1, 0.3, 1.0, 3.0]:
        d = depths_from_losses(tables, lam)
        assert ((d >= 1) & (d <= 12)).all()
        if prev is not None:
            assert (d <= prev).all(), "a larger lambda must never give a deeper token"
        prev = d


def test_table_depths_specials_take_max():
    nan = float("nan")
    table = torch.tensor([[nan, nan], [0.1, 5.0], [5.0, 0.1], [nan, nan]])
    assert table_depths(table, 0.1).tolist() == [2, 1, 2, 2]


def _tiny_mlm(tokenizer, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return AnytimeMLM(BertModel(cfg))


TEXTS = ["how far is it from denver to aspen ?", "what county is modesto , california in ?",
         "who was galileo ?", "what is an atom ?", "when did hawaii become a state ?",
         "how tall is the sears building ?", "what is the capital of france ?", "who invented the telephone ?"]


def test_anytime_mlm_training_lowers_summed_loss(tokenizer):
    model = _tiny_mlm(tokenizer)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    ids, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"].bool(),
                              tokenizer.mask_token_id, len(tokenizer), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        before = model(ids, enc["attention_mask"], labels)
    assert before.shape == (3,)
    train_anytime_mlm(model, tokenizer, TEXTS, steps=25, batch_size=8, lr=2e-3)
    with torch.no_grad():
        after = model(ids, enc["attention_mask"], labels)
    assert after.sum() < before.sum()


def test_loss_tables_shape_specials_and_chunking(tokenizer, tmp_path):
    model = _tiny_mlm(tokenizer)
    a = loss_tables(model, tokenizer, TEXTS[:4], chunk=3)
    b = loss_tables(model, tokenizer, TEXTS[:4], chunk=256)
    for text, ta, tb in zip(TEXTS[:4], a, b):
        n_tok = len(tokenizer(text)["input_ids"])
        assert ta.shape == (n_tok, 3)
        assert ta[0].isnan().all() and ta[-1].isnan().all() and ta[1:-1].isfinite().all()
        torch.testing.assert_close(ta, tb, equal_nan=True, rtol=1e-4, atol=1e-4)
    c1 = cached_loss_tables(model, tokenizer, TEXTS[:2], tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    c2 = cached_loss_tables(model, tokenizer, TEXTS[:2], tmp_path)
    for x, y in zip(c1, c2):
        torch.testing.assert_close(x, y, equal_nan=True)


def test_cache_key_is_deterministic_and_sees_every_weight(tokenizer):
    # The key once used a float sum of each tensor, which changes with torch's thread count:
    # the same weights then missed the cache and TREC's loss tables were recomputed (7 minutes).
    model = _tiny_mlm(tokenizer)
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            keys.add(cache_key(model, TEXTS, 128))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 1
    base = keys.pop()
    assert cache_key(model, TEXTS, 64) != base and cache_key(model, TEXTS[:-1], 128) != base
    with torch.no_grad():  # one ulp in the last element of the last layer's weights
        w = model.bert.encoder.layer[-1].output.dense.weight
        w.view(-1)[-1] = torch.nextafter(w.view(-1)[-1], torch.tensor(float("inf")))
    assert cache_key(model, TEXTS, 128) != base


def test_shallower_encoder_losses_are_a_prefix_of_the_table(tokenizer):
    """Why one anytime MLM serves every N: layers 1..N of a deeper model give exactly the
    losses of the same model cut to N layers, so N-layer depths are argmin over a prefix."""
    from adaptive_encoder.pretrained import truncate_layers

    deep = _tiny_mlm(tokenizer)
    full = loss_tables(deep, tokenizer, TEXTS[:3])
    shallow = _tiny_mlm(tokenizer)
    truncate_layers(shallow.bert, 2)
    shallow = AnytimeMLM(shallow.bert)
    shallow.load_state_dict({k: v for k, v in deep.state_dict().items() if k in shallow.state_dict()})
    cut = loss_tables(shallow, tokenizer, TEXTS[:3])
    for f, c in zip(full, cut):
        assert c.shape[1] == 2
        torch.testing.assert_close(f[:, :2], c, equal_nan=True, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(table_depths(f[:, :2]), table_depths(c))
        assert int(table_depths(f[:, :2]).max()) <= 2


@needs_minilm
def test_pipeline_depths_plug_into_adaptive_encoder(tokenizer):
    """Real data, real pretrained model: MI depths from a small slice drive AdaptiveEncoder."""
    from adaptive_encoder import AdaptiveEncoder
    from adaptive_encoder.data import load_dataset
    from adaptive_encoder.dense import masked_forward
    from adaptive_encoder.depth.pipeline import encode_words, mi_depths, summarize, tokenizer_words
    from adaptive_encoder.pretrained import load_pretrained

    splits = {k: v.subset(range(40)) for k, v in load_dataset("trec").items()}
    bert, tok = load_pretrained()
    est, depths = mi_depths(splits, tok, num_layers=6)
    s = summarize(depths["test"], 6)
    assert 1 <= s["avg_depth"] <= 6 and sum(s["histogram"]) == s["tokens"] and s["histogram"][0] == 0
    words = [tokenizer_words(tok, t) for t in splits["test"].texts[:6]]
    enc = encode_words(tok, words, 128)
    enc = tok.pad(enc, return_tensors="pt")
    d = torch.zeros_like(enc["input_ids"])
    for i in range(6):
        d[i, :len(depths["test"][i])] = depths["test"][i]
    with torch.no_grad():
        x = bert.embeddings(input_ids=enc["input_ids"])
        out = AdaptiveEncoder.from_bert(bert)(x, d, enc["attention_mask"])
        ref = masked_forward(bert, x, d, enc["attention_mask"])
    m = enc["attention_mask"].bool()
    assert ((out.last_hidden_state - ref)[m].norm() / ref[m].norm()) < 1e-5
    assert out.plan.active_fraction < 1.0


def test_data_loaders_decode_real_files():
    from adaptive_encoder.data import kfold, load_dataset

    trec = load_dataset("trec")
    assert (len(trec["train"]), len(trec["test"])) == (5452, 500)
    assert set(trec["train"].labels) == set(range(6))
    mr = load_dataset("mr")
    assert len(mr["train"]) + len(mr["test"]) == 10662 and len(mr["test"]) == 1066
    assert any("métier" in t for t in mr["train"].texts + mr["test"].texts)  # Latin-1 decoded right
    sst = load_dataset("sst2")
    assert any("crème brûlée" in t for t in sst["test"].texts)
    folds = kfold(10, k=5)
    assert sorted(i for _, test in folds for i in test) == list(range(10))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imdb")


def test_data_loader_rejects_malformed_line(tmp_path):
    from adaptive_encoder.data import read_file

    p = tmp_path / "bad.txt"
    p.write_text("1 fine text\nnolabel here\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_file(p, "utf-8")


def test_figures_are_written_as_png(tmp_path):
    from adaptive_encoder import plots

    plots.mi_figure([0.2, 0.01, 1e-4, 0.0], {"mi": [0, 5, 3, 2], "reconstruction": [0, 2, 3, 5]}, 3,
                    str(tmp_path / "fig1.png"), title="toy")
    plots.sentence_figure(["[CLS]", "who", "[SEP]"], {"mi": [2, 1, 2], "reconstruction": [3, 3, 3]}, 3,
                          str(tmp_path / "fig5.png"))
    points = {v: {n: (80 + n, 0.5, 100.0 if v == "fixed" else 60.0, 2) for n in (1, 2, 3)} for v in ("fixed", "mi")}
    plots.accuracy_vs_layers_figure(points, str(tmp_path / "fig3a.png"), title="toy")
    for name in ("fig1.png", "fig5.png", "fig3a.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_refuses_strings_and_texts_to_words_matches_the_tokenizer():
    from adaptive_encoder.depth import MIDepthEstimator, texts_to_words

    est = MIDepthEstimator(num_layers=3)
    with pytest.raises(TypeError, match="texts_to_words"):
        est.fit(["how far is it", "who was galileo"], [0, 1])
    with pytest.raises(TypeError, match="texts_to_words"):
        est.fit("how far", [0])

    class Tok:  # what texts_to_words needs of a fast tokenizer: its normaliser and pre-tokeniser
        class backend_tokenizer:
            normalizer = type("N", (), {"normalize_str": staticmethod(str.lower)})
            pre_tokenizer = type("P", (), {"pre_tokenize_str": staticmethod(
                lambda s: [(w, None) for w in s.replace("?", " ?").split()])})

    words = texts_to_words(Tok, ["Who was Galileo?"])
    assert words == [["who", "was", "galileo", "?"]]
    assert MIDepthEstimator(num_layers=2).fit(words, [1]).mi.keys() == {"who", "was", "galileo", "?"}
    with pytest.raises(TypeError, match="list of texts"):
        texts_to_words(Tok, "one text")


def test_token_lookup_threads_on_two_devices_and_fresh_copies():
    """One lookup called from threads with ids on different devices ('meta' stands in for a
    GPU here): each call reads a table on its ids' device, the buffer itself never moves, and
    a write to the buffer reaches the kept copies."""
    import threading

    look = TokenDepthLookup(torch.randint(1, 4, (3000,)), 3)
    errors = []

    def run(device):
        ids = torch.randint(0, 3000, (2, 16), device=device)
        try:
            for _ in range(300):
                assert look(ids).device == ids.device
        except Exception as e:  # noqa: BLE001 -- reported below, with the device
            errors.append(f"{device}: {e!r}")

    threads = [threading.Thread(target=run, args=(d,)) for d in ("cpu", "meta", "cpu", "meta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert look.table.device.type == "cpu"
    copy = look._table_on(torch.device("meta"))
    assert look._table_on(torch.device("meta")) is copy  # kept, not remade per call
    with torch.no_grad():
        look.table.fill_(2)  # in place (as load_state_dict writes): the kept copy is remade
    assert look._table_on(torch.device("meta")) is not copy
    assert torch.equal(look(torch.tensor([[5, 7]])), torch.tensor([[2, 2]]))


def test_interrupted_loss_tables_resume_from_their_finished_chunks(tokenizer, tmp_path, monkeypatch):
    """A long estimate killed midway loses at most one save interval: the rerun (with any
    number of ranks) computes only the chunks no partial file holds, to the same tables."""
    from adaptive_encoder import distributed
    from adaptive_encoder.depth import reconstruction

    model = _tiny_mlm(tokenizer)
    whole = loss_tables(model, tokenizer, TEXTS, chunk=4)
    n_chunks = math.ceil(sum(int(t[:, 0].isfinite().sum()) for t in whole) / 4)
    assert n_chunks >= 6
    partial = str(tmp_path / "job.partial")
    real, computed = reconstruction._chunk_losses, []

    def counting(model, tokenizer, ids_list, part):
        if len(computed) == stop_after:
            raise KeyboardInterrupt("killed")
        computed.append(part)
        return real(model, tokenizer, ids_list, part)

    monkeypatch.setattr(reconstruction, "_chunk_losses", counting)
    stop_after = 3  # one process, killed after three chunks (saved after each: save_every_s=0)
    with pytest.raises(KeyboardInterrupt):
        loss_tables(model, tokenizer, TEXTS, chunk=4, partial=partial, save_every_s=0)
    assert [p.name for p in tmp_path.iterdir()] == ["job.partial.rank0.pt"]
    # Rank 1 of 2 finishes its half (chunks 1, 3, 5, ...), then dies before the gather.
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "gather_objects",  # rank 0 agrees on the job, then is gone
                        lambda obj: [obj, obj] if isinstance(obj, tuple) else pytest.fail("rank 0 is gone"))
    computed.clear()
    stop_after = None
    with pytest.raises(pytest.fail.Exception, match="rank 0 is gone"):
        loss_tables(model, tokenizer, TEXTS, chunk=4, partial=partial, save_every_s=0)
    odd = [k for k in range(n_chunks) if k % 2 == 1]
    assert len(computed) == len([k for k in odd if k >= 3])  # chunk 1 was done by the first run
    monkeypatch.undo()
    monkeypatch.setattr(reconstruction, "_chunk_losses", counting)
    computed.clear()
    resumed = loss_tables(model, tokenizer, TEXTS, chunk=4, partial=partial, save_every_s=0)
    assert len(computed) == len([k for k in range(3, n_chunks) if k % 2 == 0])  # only what nobody finished
    for x, y in zip(resumed, whole):
        torch.testing.assert_close(x, y, equal_nan=True, rtol=0, atol=0)
    # Another chunk size is another job: its partial files are not read.
    computed.clear()
    loss_tables(model, tokenizer, TEXTS, chunk=5, partial=partial)
    assert sum(len(p) for p in computed) == sum(int(t[:, 0].isfinite().sum()) for t in whole)
    reconstruction.remove_partials(partial)
    assert not [p for p in tmp_path.iterdir() if ".rank" in p.name]


def test_trained_anytime_mlm_is_cached_so_a_rerun_does_not_train_again(tokenizer, tmp_path, monkeypatch):
    """An interrupted estimate resumes without retraining the MLM: the trained weights are kept
    in the cache folder (keyed by the initial weights, texts and training settings), a rerun
    loads them and gets the same weights, losses, tables and depths bit for bit (and so the
    loss tables' own cache and partial files, keyed by those weights, are found). Other
    training settings are another MLM."""
    from types import SimpleNamespace

    from adaptive_encoder.depth import pipeline, reconstruction

    def run(steps=4, seed=0):
        torch.manual_seed(123)  # the same initial encoder every time
        bert = _tiny_mlm(tokenizer).bert
        splits = {"train": SimpleNamespace(texts=TEXTS), "test": SimpleNamespace(texts=TEXTS[:3])}
        return pipeline.reconstruction_depths(splits, bert, tokenizer, steps=steps, batch_size=4, lr=1e-3,
                                              max_length=32, cache_dir=str(tmp_path), seed=seed)

    first_model, first_depths, first_losses, first_tables = run()
    assert len(first_losses) == 4 and len(list(tmp_path.glob("anytime_mlm_*.pt"))) == 1
    calls = []
    real = reconstruction.train_anytime_mlm
    monkeypatch.setattr(reconstruction, "train_anytime_mlm", lambda *a, **k: calls.append(k) or real(*a, **k))
    model, depths, losses, tables = run()
    assert calls == [] and losses == first_losses and not model.training
    for (name, p), q in zip(model.state_dict().items(), first_model.state_dict().values()):
        assert torch.equal(p, q), name
    assert all(torch.equal(a, b) for s in depths for a, b in zip(depths[s], first_depths[s]))
    for s in tables:
        for a, b in zip(tables[s], first_tables[s]):
            torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    run(steps=5)
    run(seed=1)
    assert [k["steps"] for k in calls] == [5, 4] and len(list(tmp_path.glob("anytime_mlm_*.pt"))) == 3
