"""Result tables of the accuracy experiment and the layer sweep (formatting of real records)."""
import pytest

from adaptive_encoder.experiment import write_markdown, write_sweep_markdown
from conftest import needs_minilm


def _records():
    out = []
    for n in (2, 6):
        for v, frac in (("fixed", 1.0), ("mi", 0.5)):
            for s, acc in ((0, 0.90), (1, 0.92)):
                out.append({"dataset": "trec", "variant": v, "seed": s, "layers": n, "accuracy": acc + 0.01 * n,
                            "avg_depth": n * frac, "token_layer_fraction": frac, "train_seconds": 10.0})
    return out


def test_sweep_markdown_rows_per_layer_count(tmp_path):
    path = tmp_path / "sweep.md"
    one_seed = {**_records()[0], "layers": 4, "accuracy": 0.95}
    write_sweep_markdown(_records() + [one_seed], str(path), "python -m adaptive_encoder sweep-layers")
    text = path.read_text()
    assert "Commands: `python -m adaptive_encoder sweep-layers`" in text
    assert "## trec, all-MiniLM-L6-v2" in text and "(accuracy_vs_layers_trec.png)" in text
    rows = [line for line in text.splitlines() if line[:4] in ("| 2 ", "| 4 ", "| 6 ")]
    assert rows == ["| 2 | 93.00 ± 1.41 / 100% (2) | 93.00 ± 1.41 / 50% (2) |",
                    "| 4 | 95.00 / 100% (1) |  |",  # one seed: no spread to show
                    "| 6 | 97.00 ± 1.41 / 100% (2) | 97.00 ± 1.41 / 50% (2) |"]
    assert "| N | fixed | mi |" in text


def test_accuracy_markdown_mean_std_and_paper_column(tmp_path):
    path = tmp_path / "acc.md"
    write_markdown([r for r in _records() if r["layers"] == 6], str(path), "cmd", notes="a note")
    text = path.read_text()
    assert "| trec | all-MiniLM-L6-v2 | 6 | fixed | 2 | 97.00 ± 1.41 | 6.00 | 100.0% | 10 | 96.00 |" in text
    assert "| trec | all-MiniLM-L6-v2 | 6 | mi | 2 | 97.00 ± 1.41 | 3.00 | 50.0% | 10 | 96.50 |" in text
    assert "a note" in text
    # Each run's command repeats the notes of its day: the table shows them once.
    long = "python -m adaptive_encoder experiment --seeds 1 --notes 'TREC: a split; MR: another'"
    write_markdown([dict(r, command=long) for r in _records() if r["layers"] == 6], str(path),
                   "python -m adaptive_encoder experiment --seeds 2 --notes='TREC: a split'", notes="TREC: a split")
    text = path.read_text()
    assert "Command: `python -m adaptive_encoder experiment --seeds 1 --notes NOTES`" in text
    assert "Command: `python -m adaptive_encoder experiment --seeds 2 --notes=NOTES`" in text
    assert text.count("TREC: a split") == 1 and "MR: another" not in text and "NOTES stands for" in text
    # Another model's rows form their own group, never averaged with these.
    mpnet = [{**r, "model": "all-mpnet-base-v2", "layers": 12, "accuracy": 0.5} for r in _records()
             if r["layers"] == 6]
    write_markdown([r for r in _records() if r["layers"] == 6] + mpnet, str(path), "cmd")
    text = path.read_text()
    assert "| trec | all-MiniLM-L6-v2 | 6 | fixed | 2 | 97.00 ± 1.41 |" in text
    assert "| trec | all-mpnet-base-v2 | 12 | fixed | 2 | 50.00 ± 0.00 |" in text


def test_train_seconds_name_their_device_and_are_not_averaged_across_devices(tmp_path):
    path = tmp_path / "acc.md"
    recs = [r for r in _records() if r["layers"] == 6]
    gpu = [dict(r, device="cuda", train_seconds=2.0) if r["variant"] == "mi" else r for r in recs]
    write_markdown(gpu, str(path), "cmd")
    text = path.read_text()
    assert "| fixed | 2 | 97.00 ± 1.41 | 6.00 | 100.0% | 10 | 96.00 |" in text  # no device: the CPU
    assert "| mi | 2 | 97.00 ± 1.41 | 3.00 | 50.0% | 2 (cuda) | 96.50 |" in text
    mixed = [dict(r, device="cuda", train_seconds=2.0) if r["seed"] == 1 else r for r in recs]
    write_markdown(mixed, str(path), "cmd")
    assert "| fixed | 2 | 97.00 ± 1.41 | 6.00 | 100.0% | mixed (cpu, cuda) | 96.00 |" in path.read_text()


def test_accuracy_figure_draws_each_group_mean_and_std(tmp_path):
    recs = [dict(r, model="all-MiniLM-L6-v2") for r in _records()]
    recs.append({**recs[0], "variant": "halting", "token_layer_fraction": 0.7})  # one seed only
    drawn = write_markdown(recs, str(tmp_path / "accuracy.md"), "cmd")
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert "![accuracy against the share of token-layers computed](accuracy.png)" in (tmp_path / "accuracy.md").read_text()
    assert list(drawn) == [("trec", "all-MiniLM-L6-v2", 2), ("trec", "all-MiniLM-L6-v2", 6)]
    # One seed has no spread: the table gives its accuracy alone, not "± 0.00".
    one = [l for l in (tmp_path / "accuracy.md").read_text().splitlines() if "| halting |" in l]
    assert len(one) == 1 and "| halting | 1 | 92.00 | " in one[0] and "±" not in one[0], one
    six = drawn[("trec", "all-MiniLM-L6-v2", 6)]
    assert list(six) == ["fixed", "mi"]  # the halting record has N = 2
    for v, frac in (("fixed", 100.0), ("mi", 50.0)):
        x, y, sd, n = six[v]
        assert (x, n) == (frac, 2) and y == pytest.approx(97.0) and sd == pytest.approx(1.41421, abs=1e-4)
    assert drawn[("trec", "all-MiniLM-L6-v2", 2)]["halting"] == pytest.approx((70.0, 92.0, 0.0, 1))
    # Old records without a model or N count as MiniLM, N = 6: the same points.
    (tmp_path / "accuracy.png").unlink()
    old = write_markdown([{k: v for k, v in r.items() if k not in ("model", "layers")} for r in recs if r["layers"] == 6],
                         str(tmp_path / "accuracy.md"), "cmd")
    assert old == {("trec", "all-MiniLM-L6-v2", 6): six}
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_layer_sweep_reuses_only_identical_runs(tmp_path):
    import json

    from adaptive_encoder.experiment import run_layer_sweep
    from adaptive_encoder.train import TrainConfig

    cfg = TrainConfig(epochs=3, lr=5e-5, batch_size=32)
    recs = [r for r in _records() if r["layers"] == 6]
    for r in recs:
        r.update(epochs=3, lr=5e-5, batch_size=32)
    other = dict(recs[0], lr=1e-4, seed=2)  # a different learning rate: must not be taken
    (tmp_path / "accuracy.json").write_text(json.dumps(recs + recs[:1] + [other]))  # and no duplicates
    with pytest.raises(OSError):  # seed 2 is not there to reuse: it would train (no such model here)
        run_layer_sweep("trec", ["fixed", "mi"], [6], [0, 1, 2], cfg, str(tmp_path / "out"), "cmd",
                        reuse=str(tmp_path / "accuracy.json"), model_path=str(tmp_path / "no-model"))
    out = run_layer_sweep("trec", ["fixed", "mi"], [6], [0, 1], cfg, str(tmp_path / "out"), "cmd",
                          reuse=str(tmp_path / "accuracy.json"), log=lambda *a: None)
    assert len(out) == 4 and all(r["reused_from"] == "accuracy.json" for r in out)
    assert sorted((r["variant"], r["seed"]) for r in out) == [("fixed", 0), ("fixed", 1), ("mi", 0), ("mi", 1)]
    assert json.loads((tmp_path / "out" / "accuracy_vs_layers.json").read_text()) == out
    assert (tmp_path / "out" / "accuracy_vs_layers_trec.png").exists()
    assert "Runs of N = 6 are the identical runs of accuracy.json" in (tmp_path / "out" / "accuracy_vs_layers.md").read_text()


def test_results_trained_otherwise_are_refused_not_skipped(tmp_path):
    """A results file holding runs of the same (dataset, model, N, variant) trained with other
    settings (a --limit smoke run, other epochs) stops the experiment and the sweep: one of the
    same seed used to be skipped as done and its accuracy reported as the new run's, one of
    another seed averaged with it in the table."""
    import json

    from adaptive_encoder.distributed import InputError
    from adaptive_encoder.experiment import run_experiment, run_layer_sweep, run_settings
    from adaptive_encoder.train import TrainConfig

    cfg, no_model = TrainConfig(), str(tmp_path / "no-model")
    fixed6 = next(r for r in _records() if r["layers"] == 6 and r["variant"] == "fixed" and r["seed"] == 0)
    fixed6["model"] = "no-model"  # the label of model_path below
    smoke = dict(fixed6, epochs=1, lr=5e-5, batch_size=32, settings=run_settings(TrainConfig(epochs=1), 16))
    old = dict(fixed6, epochs=1, lr=5e-5, batch_size=32)  # written before settings were recorded
    for rec, says in ((smoke, "epochs 1 there, 3 here, limit 16 there, 0 here"), (old, "epochs 1 there, 3 here")):
        (tmp_path / "accuracy.json").write_text(json.dumps([rec]))
        (tmp_path / "accuracy_vs_layers.json").write_text(json.dumps([rec]))
        with pytest.raises(InputError, match=says):
            run_experiment(["trec"], ["fixed"], [0], cfg, 6, str(tmp_path), "cmd", model_path=no_model)
        with pytest.raises(InputError, match="trec fixed N=6 \\(no-model\\) seed 0"):
            run_layer_sweep("trec", ["fixed"], [6], [0], cfg, str(tmp_path), "cmd", model_path=no_model)
        with pytest.raises(InputError, match="seed 0 trained with other settings"):  # another seed, same row
            run_experiment(["trec"], ["fixed"], [1], cfg, 6, str(tmp_path), "cmd", model_path=no_model)
        # Other N or variants are other rows: the run goes on (to train: no model here).
        for variants, n in ((["mi"], 6), (["fixed"], 4)):
            with pytest.raises(OSError):
                run_experiment(["trec"], variants, [0], cfg, n, str(tmp_path), "cmd", model_path=no_model)
    # The same settings, recorded or (old records) the defaults: done, nothing trained.
    for rec in (dict(fixed6, epochs=3, lr=5e-5, batch_size=32, settings=run_settings(cfg, 0)),
                dict(fixed6, epochs=3, lr=5e-5, batch_size=32)):
        (tmp_path / "accuracy_vs_layers.json").write_text(json.dumps([rec]))
        assert run_layer_sweep("trec", ["fixed"], [6], [0], cfg, str(tmp_path), "cmd", model_path=no_model,
                               log=lambda *a: None) == [rec]


def test_layer_sweep_keeps_models_apart(tmp_path):
    """An MPNet sweep neither skips nor reuses MiniLM runs of the same N, and each model gets
    its own table and figure."""
    import json

    from adaptive_encoder.experiment import run_layer_sweep
    from adaptive_encoder.train import TrainConfig

    cfg = TrainConfig(epochs=3, lr=5e-5, batch_size=32)
    minilm = [dict(r, epochs=3, lr=5e-5, batch_size=32) for r in _records() if r["layers"] == 6]
    (tmp_path / "accuracy.json").write_text(json.dumps(minilm))
    out = tmp_path / "out"
    out.mkdir()
    (out / "accuracy_vs_layers.json").write_text(json.dumps(minilm))  # a MiniLM sweep already there
    with pytest.raises(OSError):  # nothing of MPNet's is done or reusable: it would train
        run_layer_sweep("trec", ["fixed", "mi"], [6], [0], cfg, str(out), "cmd", model_path=str(tmp_path / "mpnet"),
                        reuse=str(tmp_path / "accuracy.json"), log=lambda *a: None)
    mpnet = [dict(r, model="all-mpnet-base-v2", accuracy=0.5) for r in minilm]
    (out / "accuracy_vs_layers.json").write_text(json.dumps(minilm + mpnet))
    recs = run_layer_sweep("trec", ["fixed", "mi"], [6], [0, 1], cfg, str(out), "cmd", model_path="mpnet",
                           log=lambda *a: None)
    assert recs == minilm + mpnet  # all done: nothing trained, nothing mixed
    text = (out / "accuracy_vs_layers.md").read_text()
    assert "## trec, all-MiniLM-L6-v2" in text and "## trec, all-mpnet-base-v2" in text
    assert "| 6 | 50.00 ± 0.00 / 100% (2) | 50.00 ± 0.00 / 50% (2) |" in text
    assert (out / "accuracy_vs_layers_trec_all-mpnet-base-v2.png").exists()


@needs_minilm
def test_run_one_is_determined_by_its_seed():
    """The seed fixes the whole run, the new classifier head included, whatever ran before."""
    import torch

    from adaptive_encoder.experiment import run_one
    from adaptive_encoder.train import Encoded, TrainConfig

    ids = [[101, 2129 + i, 2003, 1037, 3231, 102] for i in range(8)]
    data = (Encoded(ids, [i % 2 for i in range(8)], None), Encoded(ids[:4], [0, 1, 0, 1], None))
    cfg = TrainConfig(epochs=1, batch_size=4)
    first = run_one("toy", "fixed", 3, data, cfg, layers=1, num_labels=2)
    torch.randn(1000)  # whatever else consumed the global generator in between
    second = run_one("toy", "fixed", 3, data, cfg, layers=1, num_labels=2)
    assert first["final_train_loss"] == second["final_train_loss"]
    assert first["accuracy"] == second["accuracy"]


@needs_minilm
def test_experiment_runs_a_variant_without_fixed(tmp_path):
    """--variants halting (or mi) alone: the label count comes from whichever variant ran
    (it once read the fixed variant's data only, a KeyError)."""
    import json

    from adaptive_encoder.experiment import run_experiment
    from adaptive_encoder.train import TrainConfig

    records = run_experiment(["trec"], ["mi"], [0], TrainConfig(epochs=1, batch_size=8), layers=2,
                             out_dir=str(tmp_path), command="test", progress=False, limit=16, log=lambda *a: None)
    assert [(r["variant"], r["layers"]) for r in records] == [("mi", 2)]
    assert json.load(open(tmp_path / "accuracy.json"))[0]["variant"] == "mi"


@needs_minilm
def test_estimated_reconstruction_depths_come_from_the_whole_encoder_for_every_n(tmp_path):
    # A sweep that starts below the model's depth estimates the missing depths on its first N.
    # They must come from the anytime MLM on all 6 layers, cut to N, as `estimate-depths` writes
    # them: an MLM on N layers alone gave other depths, and its file (written as N layers) made
    # every larger N an error.
    import torch

    from adaptive_encoder.data import load_dataset
    from adaptive_encoder.depth.pipeline import saved_loss_tables
    from adaptive_encoder.depth.reconstruction import table_depths
    from adaptive_encoder.experiment import prepare
    from adaptive_encoder.pretrained import load_pretrained

    _, tok = load_pretrained()
    d = str(tmp_path / "trec")
    two = prepare("trec", tok, 2, 64, d, mlm_steps=2, limit=6, variants=["reconstruction"])
    saved = torch.load(f"{d}/depths_reconstruction.pt")
    assert saved["layers"] == 6 and (tmp_path / "trec" / "anytime_mlm.pt").exists()
    four = prepare("trec", tok, 4, 64, d, limit=6, variants=["reconstruction"], estimate_missing=False)
    six = prepare("trec", tok, 6, 64, d, limit=6, variants=["reconstruction"], estimate_missing=False)
    splits = {k: v.subset(range(6)) for k, v in load_dataset("trec").items()}
    tables = saved_loss_tables(d, splits, tok, 6, max_length=64)
    for n, got in ((2, two), (4, four), (6, six)):
        for i, split in enumerate(("train", "test")):
            want = [table_depths(t[:, :n], 0.1) for t in tables[split]]
            assert [x.tolist() for x in got["reconstruction"][i].depths] == [x.tolist() for x in want]
            assert max(int(x.max()) for x in want) <= n
    assert [x.tolist() for x in six["reconstruction"][0].depths] == [x.tolist() for x in saved["depths"]["train"]]


@needs_minilm
def test_reconstruction_depths_of_another_model_or_tokenisation_are_refused(tmp_path):
    # The depth folder is <depths>/<dataset> whatever the model: a run on another model used to
    # take MiniLM's depths as they were whenever its tokenizer gave the same lengths.
    import torch
    from transformers import BertConfig, BertModel

    from adaptive_encoder.experiment import prepare
    from adaptive_encoder.pretrained import load_pretrained

    _, tok = load_pretrained()
    d = str(tmp_path / "trec")
    prepare("trec", tok, 6, 64, d, mlm_steps=2, limit=4, variants=["reconstruction"])
    saved = torch.load(f"{d}/depths_reconstruction.pt")
    assert saved["model"] == "all-MiniLM-L6-v2"
    other = tmp_path / "other-bert"  # another 6-layer model with MiniLM's tokenizer
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
                         vocab_size=tok.vocab_size)).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match="all-MiniLM-L6-v2's anytime MLM, not other-bert's"):
        prepare("trec", tok, 6, 64, d, str(other), limit=4, variants=["reconstruction"], estimate_missing=False)
    # A file written before the model was recorded: its lengths are still checked, text by text.
    del saved["model"]
    saved["depths"]["test"][1] = torch.cat([saved["depths"]["test"][1], torch.tensor([1])])
    torch.save(saved, f"{d}/depths_reconstruction.pt")
    with pytest.raises(ValueError, match="test text 1 has"):
        prepare("trec", tok, 6, 64, d, limit=4, variants=["reconstruction"], estimate_missing=False)


def test_saved_depth_lengths_may_differ_only_where_a_max_length_clipped_the_text():
    from adaptive_encoder.experiment import _check_saved_depths

    def check(depth_len, token_len, here=8, there=6):
        saved = {"layers": 6, "max_length": there, "model": "all-MiniLM-L6-v2",
                 "depths": {"test": [[1] * depth_len]}}
        _check_saved_depths(saved, "f.pt", {"test": [[0] * token_len]}, "trec", 6, None, here)

    check(5, 5)
    check(6, 7)  # clipped by the file's max length (6): the tokens go on
    check(10, 8, here=8, there=16)  # clipped by this run's max length (8): the depths go on
    for depth_len, token_len in ((5, 4), (4, 5), (7, 6)):
        with pytest.raises(ValueError, match="clipped at neither max length"):
            check(depth_len, token_len)
