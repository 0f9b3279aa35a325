"""More than one process: torchrun with 2 CPU processes (gloo, loopback only) gives the same
training steps, MI table and predictions as one process; bad inputs end every rank."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_minilm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _torchrun(*args, nproc=2, timeout=240, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPTIVE_ENCODER_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _single(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("what", ["train", "halting"])
def test_two_processes_train_exactly_like_one(tmp_path, what):
    _single(str(HERE / "dist_worker.py"), what, str(tmp_path / "one.json"))
    _torchrun(str(HERE / "dist_worker.py"), what, str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (one["world"], two["world"]) == (1, 2)
    assert len(one["losses"]) == len(two["losses"]) > 2
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    # Equal up to float summation order (gradients are summed across ranks; Adam divides by the
    # root of tiny second moments, so a few near-zero weights move by ~1e-6).
    torch.testing.assert_close(torch.tensor(two["params"]), torch.tensor(one["params"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("what", ["mi", "mi_depths"])
def test_mi_counts_are_summed_over_ranks(tmp_path, what):
    # mi: each rank fits its share of the documents. mi_depths: every rank holds all of them,
    # as `train --depth mi` and `evaluate` under torchrun do; counting them on every rank
    # would sum W copies (MI off by up to 10 % on these documents, 190 of 8,464 TREC words
    # in another bin at W = 2).
    _single(str(HERE / "dist_worker.py"), what, str(tmp_path / "one.json"))
    _torchrun(str(HERE / "dist_worker.py"), what, str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["word_depth"] == one["word_depth"]
    assert two.get("depths") == one.get("depths")
    assert two["mi"].keys() == one["mi"].keys()
    assert all(abs(two["mi"][w] - one["mi"][w]) < 1e-12 for w in one["mi"])


def test_reconstruction_depths_shared_by_two_ranks_are_one_process_depths(tmp_path):
    """The anytime MLM trains data parallel; the loss tables (the long part: one forward per
    token) are split between the ranks by chunk; both ranks end with every table, rank 0
    alone writes the files."""
    _single(str(HERE / "dist_worker.py"), "recon", str(tmp_path / "one.json"))
    _torchrun(str(HERE / "dist_worker.py"), "recon", str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert sum(len(t) - 2 for t in one["depths"]["train"]) > 2 * 256  # three chunks or more: both ranks work
    # The MLM's steps: the 1-process losses and weights up to float summation order (gradients
    # summed across ranks; Adam moves near-zero weights by ~1e-6, as in training).
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(two["mlm"]), torch.tensor(one["mlm"]), rtol=1e-5, atol=1e-5)
    assert two["depths"] == one["depths"]
    assert min(two["computed"]) > 0 and sum(two["computed"]) == one["computed"][0]  # shared, not repeated
    for split in one["tables"]:
        for a, b in zip(one["tables"][split], two["tables"][split]):
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-5)
    keyless = [[re.sub(r"loss_tables_\w+\.pt", "loss_tables_KEY.pt", f) for f in run["files"]] for run in (one, two)]
    assert keyless[1] == keyless[0]  # no partial or temporary file left (keys: weights equal to ~1e-6)
    # The trained MLM (kept for a resumed run) and one loss-table file per split.
    assert [re.sub(r"^cache/([a-z_]+)_[0-9a-f]{16}\.pt$", r"cache/\1_KEY.pt", f) for f in one["files"]] == \
        ["anytime_mlm.pt", "cache/anytime_mlm_KEY.pt", "cache/loss_tables_KEY.pt", "cache/loss_tables_KEY.pt",
         "depths_reconstruction.pt"]


def test_loss_tables_of_each_ranks_own_texts_are_refused_on_every_rank(tmp_path):
    # Shares of one job: ranks passing their own texts would get other texts' losses.
    _torchrun(str(HERE / "dist_worker.py"), "recon_own", str(tmp_path / "two.json"))
    errors = json.loads((tmp_path / "two.json").read_text())["errors"]
    assert len(errors) == 2 and all(e and "the ranks passed different texts" in e for e in errors)


@needs_minilm
def test_estimate_depths_under_torchrun_writes_the_one_process_files(tmp_path):
    """The CLI: MI fitted on the ranks' shares, reconstruction tables shared, rank 0 writes and
    prints. No MLM steps: its dropout draws differ between layouts (its data-parallel steps
    are checked without dropout above), so only an untrained MLM gives equal depths."""
    args = ["-m", "adaptive_encoder", "estimate-depths", "--dataset", "trec", "--limit", "40", "--mlm-steps", "0"]
    one = _single(*args, "--out", str(tmp_path / "one"))
    two = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert two.stdout.count("wrote ") == 1 and one.stdout.count("wrote ") == 1
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in ("depths_mi.pt", "depths_reconstruction.pt"):
        a, b = (torch.load(tmp_path / run / name) for run in ("one", "two"))
        assert a.keys() == b.keys() and a["depths"].keys() == b["depths"].keys()
        for split in a["depths"]:
            assert all(torch.equal(x, y) for x, y in zip(a["depths"][split], b["depths"][split]))
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two")]
    for s in summaries:
        for method in ("mi", "reconstruction"):
            del s[method]["seconds"]
    assert summaries[1] == summaries[0]
    assert sorted(p.name for p in (tmp_path / "two" / "cache").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "cache").iterdir())  # no partial files left


def _tiny_checkpoint(tmp_path, variant="fixed", limit=0, spread_on=None):
    """A checkpoint of a tiny random BERT saved as a local model folder (no pretrained package).
    spread_on (texts): the random head is centred on these texts' mean pooled features and
    scaled, so that its labels differ among them (uncentred, the features' common level picks
    one class for every text)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from adaptive_encoder.classifier import AdaptiveClassifier
    from adaptive_encoder.train import save_checkpoint

    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                vocab_size=100, max_position_embeddings=64))
    bert.save_pretrained(str(folder))
    model = AdaptiveClassifier(bert, 3)
    if spread_on is not None:
        from adaptive_encoder.classifier import pool

        enc = BertTokenizerFast.from_pretrained(str(folder))(spread_on, padding=True, return_tensors="pt")
        mask = enc["attention_mask"].bool()
        with torch.no_grad():
            states = model.encoder(model.embed(enc["input_ids"], mask), None, mask).last_hidden_state
            model.head.weight.mul_(10.0)
            model.head.bias.copy_(-model.head.weight @ pool(states, mask).mean(0))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, {"model_path": str(folder), "num_labels": 3, "layers": 3, "halting": False,
                                       "dropout": 0.1, "dataset": "trec", "variant": variant,
                                       "config": {"max_length": 64}, "limit": limit})
    return path


def test_predict_one_and_two_processes_write_identical_files(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    texts = tmp_path / "texts.txt"
    gen = torch.Generator().manual_seed(0)
    texts.write_text("\n".join(" ".join(f"w{int(w)}" for w in torch.randint(0, 95, (int(n),), generator=gen))
                               for n in torch.randint(1, 20, (23,), generator=gen)) + "\n")
    args = ["-m", "adaptive_encoder", "predict", str(ckpt), "--input", str(texts), "--batch-size", "4"]
    one = _single(*args, "--out", str(tmp_path / "one.jsonl"))
    _torchrun(*args, "--out", str(tmp_path / "two.jsonl"))
    lines = (tmp_path / "one.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(23))
    assert all(json.loads(line)["depth_mean"] == 3 for line in lines)  # a fixed-depth checkpoint
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert "23 texts" in one.stdout and "texts/s" in one.stdout and "token-layers 100.0%" in one.stdout
    # A rerun skips a complete shard of the same inputs: a shard file left in place with the
    # matching fingerprint is taken as it is, not recomputed.
    from adaptive_encoder.predict import read_texts, shard_fingerprint

    all_texts, indices = read_texts(str(texts))
    fingerprint = shard_fingerprint(str(ckpt), all_texts[11:], indices[11:], None, "runs/depths")
    kept = "".join(json.dumps({"index": i, "label": 9, "depth_mean": 0.5}) + "\n" for i in range(11, 23))

    def header(fp, computed, tokens):
        return json.dumps({"fingerprint": fp, "computed_token_layers": computed, "real_tokens": tokens}) + "\n"

    # The kept shard's first line says 1000 real tokens, none computed: the reported fraction
    # counts it (before, only the computed shards', 100 % here), and the rate only this run's texts.
    (tmp_path / "two.jsonl.shard1of2").write_text(header(fingerprint, 0, 1000) + kept)
    out = _torchrun(*args, "--out", str(tmp_path / "two.jsonl")).stdout
    merged = (tmp_path / "two.jsonl").read_text().splitlines(True)
    assert "".join(merged[:11]) == "".join(x + "\n" for x in lines[:11]) and "".join(merged[11:]) == kept
    assert "texts/s over the 11 computed (12 from finished shards of an earlier run)" in out, out
    assert 0 < float(re.search(r"token-layers ([\d.]+)%", out).group(1)) < 30, out
    # Both shards kept: no rate to report; the fraction is the shards' own (60 of 40 x 3 layers).
    first = shard_fingerprint(str(ckpt), all_texts[:11], indices[:11], None, "runs/depths")
    (tmp_path / "two.jsonl.shard0of2").write_text(header(first, 30, 20) + "".join(x + "\n" for x in lines[:11]))
    (tmp_path / "two.jsonl.shard1of2").write_text(header(fingerprint, 30, 20) + kept)
    out = _torchrun(*args, "--out", str(tmp_path / "two.jsonl")).stdout
    assert "23 texts, every shard reused from an earlier run on 2 process(es) (cpu, float32), token-layers 50.0%" in out, out
    assert "".join((tmp_path / "two.jsonl").read_text().splitlines(True)[11:]) == kept
    # A shard left by a run on other texts (another fingerprint, or none: an older version) is
    # recomputed, never merged into this run's output.
    for header in (header("0" * 24, 1, 1), json.dumps({"fingerprint": fingerprint}) + "\n", ""):
        (tmp_path / "two.jsonl.shard1of2").write_text(header + kept)
        _torchrun(*args, "--out", str(tmp_path / "two.jsonl"))
        assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert not list(tmp_path.glob("two.jsonl.shard*"))  # merged and cleaned up


def test_predict_reuses_one_ranks_shard_while_the_other_refits_mi_depths(tmp_path):
    """Refitting an MI checkpoint's depths is collective (counts summed over ranks), so every
    rank joins it whenever any rank has a shard to compute, its own shard kept or not."""
    ckpt = _tiny_checkpoint(tmp_path, "mi", limit=60)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"w{i} w{i + 1} what is it" for i in range(9)) + "\n")
    args = ["-m", "adaptive_encoder", "predict", str(ckpt), "--input", str(texts), "--batch-size", "4"]
    _single(*args, "--out", str(tmp_path / "one.jsonl"))
    lines = (tmp_path / "one.jsonl").read_text().splitlines(True)
    from adaptive_encoder.predict import read_texts, shard_fingerprint

    all_texts, indices = read_texts(str(texts))
    fingerprint = shard_fingerprint(str(ckpt), all_texts[4:], indices[4:], None, "runs/depths")
    head = json.dumps({"fingerprint": fingerprint, "computed_token_layers": 1, "real_tokens": 1})
    (tmp_path / "two.jsonl.shard1of2").write_text(head + "\n" + "".join(lines[4:]))
    proc = _torchrun(*args, "--out", str(tmp_path / "two.jsonl"), check=False, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_text() == "".join(lines)


def test_predict_indices_are_input_lines_when_blank_lines_are_skipped(tmp_path):
    """A blank line has no prediction; every later text keeps its own line number as index
    (before, indices counted texts, so each line after a blank was labelled as the one above)."""
    ckpt = _tiny_checkpoint(tmp_path)
    texts = tmp_path / "texts.txt"
    texts.write_text("w1 w2\n\n   \nw3\r\nw4 w5 w6\n\n")
    args = ["-m", "adaptive_encoder", "predict", str(ckpt), "--input", str(texts)]
    _single(*args, "--out", str(tmp_path / "all.jsonl"))
    assert [json.loads(x)["index"] for x in (tmp_path / "all.jsonl").read_text().splitlines()] == [0, 3, 4]
    _single(*args, "--limit", "2", "--out", str(tmp_path / "two.jsonl"))
    assert [json.loads(x)["index"] for x in (tmp_path / "two.jsonl").read_text().splitlines()] == [0, 3]


def test_reconstruction_checkpoints_say_which_texts_they_have_depths_for(tmp_path):
    """Reconstruction depths exist only for the checkpoint's dataset, and for a --limit run only
    for its first texts: other texts are an error that says so (it was a traceback, an
    IndexError for texts past the limit), the texts that have depths run."""
    from transformers import BertTokenizerFast

    from adaptive_encoder.data import load_dataset
    from adaptive_encoder.depth.pipeline import encode_words, tokenizer_words

    ckpt = _tiny_checkpoint(tmp_path, "reconstruction", limit=4)
    tok = BertTokenizerFast.from_pretrained(str(tmp_path / "tiny-bert"))
    splits = load_dataset("trec")
    depths = {k: [[1 + i % 3 for i in range(len(ids))]
                  for ids in encode_words(tok, [tokenizer_words(tok, t) for t in splits[k].texts[:4]], 64)["input_ids"]]
              for k in ("train", "test")}
    (tmp_path / "depths" / "trec").mkdir(parents=True)
    torch.save({"layers": 3, "max_length": 64, "lam": 0.1, "model": "tiny-bert", "depths": depths},
               tmp_path / "depths" / "trec" / "depths_reconstruction.pt")
    (tmp_path / "in.txt").write_text("w1 w2\n")
    base = [sys.executable, "-m", "adaptive_encoder", "predict", str(ckpt), "--depths", str(tmp_path / "depths"),
            "--out", str(tmp_path / "p.jsonl")]
    for extra, msg in ((["--input", str(tmp_path / "in.txt")], "depths for new texts need the anytime MLM"),
                       (["--dataset", "trec"], "cover the first 4 texts of the split, not 500: pass --limit 4")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, cwd=REPO)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run(base + ["--dataset", "trec", "--limit", "3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    want = [sum(d) / len(d) for d in depths["test"][:3]]  # depth_mean: the file's depths, as given
    assert [x["depth_mean"] for x in lines] == pytest.approx(want, abs=1e-6)


def test_bad_inputs_end_every_rank_with_a_clear_message(tmp_path):
    bad = _torchrun("-m", "adaptive_encoder", "predict", str(tmp_path / "missing.pt"), "--input", "x",
                    "--out", str(tmp_path / "p.jsonl"), check=False, timeout=120)
    assert bad.returncode != 0
    assert "rank 0: checkpoint" in bad.stderr and "rank 1: checkpoint" in bad.stderr
    ckpt = _tiny_checkpoint(tmp_path)
    for content, msg in ((b"", "has no text"), (b"ok line\n\xff\xfe broken\n", "line 2: not UTF-8")):
        f = tmp_path / "in.txt"
        f.write_bytes(content)
        proc = subprocess.run([sys.executable, "-m", "adaptive_encoder", "predict", str(ckpt), "--input", str(f),
                               "--out", str(tmp_path / "p.jsonl")], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode != 0 and msg in proc.stderr and str(f) in proc.stderr
        assert "error: " in proc.stderr and "Traceback" not in proc.stderr  # a message, not a crash


def test_a_rank_that_dies_ends_every_rank_in_bounded_time(tmp_path):
    import time

    t0 = time.perf_counter()
    proc = _torchrun(str(HERE / "dist_worker.py"), "die", str(tmp_path / "x.json"), check=False, timeout=120)
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stderr
    assert time.perf_counter() - t0 < 100  # torchrun stops the others; the collective timeout is 60 s here
