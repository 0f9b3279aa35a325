"""--device (and --dtype for inference): the trainer, the anytime MLM, evaluate and predict
run on the device asked for and give what the CPU gives; the process group and the device
each rank takes under torchrun. Every test runs on the CPU and, where there is one, a GPU."""
import json

import pytest
import torch
from transformers import BertConfig, BertModel

from adaptive_encoder.classifier import AdaptiveClassifier
from adaptive_encoder.train import TrainConfig, evaluate, train
from dist_worker import data, tiny_tokenizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _tiny_classifier(halting=False):
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                     vocab_size=100, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return AdaptiveClassifier(BertModel(cfg), 3, dropout=0.0, halting=halting)


@pytest.mark.parametrize("halting", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_training_on_a_device_follows_the_cpu(device, halting):
    """train() and evaluate() move every batch to the model's device: the losses (both stages
    of the halting baseline) and the final weights are the CPU run's up to float rounding (on
    the CPU itself, exactly the same run)."""
    runs = {}
    for dev in sorted({"cpu", device}):
        model = _tiny_classifier(halting).to(dev)
        hist = train(model, data(), TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0, halting_epochs=1), pad_id=0)
        ev = evaluate(model, data(12, seed=1), pad_id=0, batch_size=5)
        assert all(p.device.type == dev for p in model.parameters())
        runs[dev] = hist["losses"], [p.detach().cpu() for p in model.parameters()], ev
    (losses, params, ev), (d_losses, d_params, d_ev) = runs["cpu"], runs[device]
    assert len(losses) == (7 if halting else 6) and len(d_losses) == len(losses)
    torch.testing.assert_close(torch.tensor(d_losses), torch.tensor(losses), rtol=1e-3, atol=1e-4)
    # Adam moves a weight whose gradient is rounding noise by up to lr per step either way.
    for a, b in zip(d_params, params):
        torch.testing.assert_close(a, b, rtol=0, atol=7 * 1e-3)
    assert d_ev["avg_depth"] == ev["avg_depth"] and abs(d_ev["accuracy"] - ev["accuracy"]) <= 1 / 12


@pytest.mark.parametrize("halting", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_runs_the_forward_in_bfloat16_and_follows_float32(device, halting):
    """TrainConfig(bf16=True) / --bf16: the forward runs in bfloat16 under autocast (the head's
    output, seen by a hook), weights and Adam stay float32, and the losses follow float32's loosely."""
    seen = set()
    runs = {}
    for bf16 in (False, True):
        model = _tiny_classifier(halting).to(device)
        hook = model.head.register_forward_hook(lambda m, i, o: seen.add((bf16, o.dtype)))
        hist = train(model, data(), TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0, halting_epochs=1,
                                                bf16=bf16), pad_id=0)
        hook.remove()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[bf16] = hist["losses"]
    assert seen == {(False, torch.float32), (True, torch.bfloat16)}
    torch.testing.assert_close(torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=5e-2, atol=5e-2)


def test_records_written_before_a_setting_existed_read_as_its_default():
    from adaptive_encoder.experiment import _settings_of, run_settings

    now = run_settings(TrainConfig(epochs=3), 0)
    older = {k: v for k, v in now.items() if k != "bf16"}  # a record of before --bf16
    assert _settings_of({"settings": older}) == now
    assert _settings_of({"settings": {**older, "bf16": True}}) != now


@pytest.mark.parametrize("device", DEVICES)
def test_anytime_mlm_and_loss_tables_on_a_device_follow_the_cpu(device, tmp_path):
    """The reconstruction estimate on a device: the masks are drawn on the CPU (the same draws),
    the MLM trains and the tables are computed there, the tables come back on the CPU, and the
    files saved (the MLM's weights) load on a machine without that device."""
    from types import SimpleNamespace

    from adaptive_encoder.depth.pipeline import estimate_reconstruction
    from dist_worker import mi_docs

    docs, _ = mi_docs(40)
    texts = [" ".join(d) for d in docs]
    splits = {"train": SimpleNamespace(texts=texts[:30]), "test": SimpleNamespace(texts=texts[30:])}
    runs = {}
    for dev in sorted({"cpu", device}):
        torch.manual_seed(0)
        bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                    vocab_size=45, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)).to(dev)
        out = tmp_path / dev
        saved, losses, tables = estimate_reconstruction(splits, bert, tiny_tokenizer(), str(out), steps=4,
                                                        max_length=32)
        assert all(t.device.type == "cpu" for ts in tables.values() for t in ts)
        for f in [out / "anytime_mlm.pt", *out.glob("cache/anytime_mlm_*.pt")]:
            state = torch.load(f, map_location=None)
            state = state.get("state_dict", state)
            assert all(v.device.type == "cpu" for v in state.values()), f
        runs[dev] = saved, losses, tables
    (saved, losses, tables), (d_saved, d_losses, d_tables) = runs["cpu"], runs[device]
    torch.testing.assert_close(torch.tensor(d_losses), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    for split in tables:
        for a, b in zip(d_tables[split], tables[split]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, equal_nan=True)
    flips = sum(int((a != b).sum()) for s in saved["depths"] for a, b in zip(saved["depths"][s], d_saved["depths"][s]))
    assert flips <= 2  # an argmin can flip on a near tie of two layers' losses


@pytest.mark.parametrize("device", DEVICES)
def test_run_one_on_a_device_saves_a_checkpoint_that_loads_on_the_cpu(tmp_path, device):
    from adaptive_encoder.checkpoint import load_checkpoint
    from adaptive_encoder.experiment import run_one
    from test_distributed import _tiny_checkpoint

    _tiny_checkpoint(tmp_path)  # writes the tiny model folder
    enc = data(16)
    r = run_one("trec", "fixed", 0, (enc, enc.subset(range(6))), TrainConfig(epochs=1, batch_size=8), 3, 3,
                model_path=str(tmp_path / "tiny-bert"), checkpoint_dir=str(tmp_path / "ckpt"), device=device)
    assert r["device"] == device
    model, _, meta = load_checkpoint(str(tmp_path / "ckpt" / "trec_fixed_N3_seed0"))
    assert all(p.device.type == "cpu" for p in model.parameters()) and meta["variant"] == "fixed"
    assert evaluate(model, enc.subset(range(6)), pad_id=0)["accuracy"] == r["accuracy"]


@pytest.mark.parametrize("device", DEVICES)
def test_predict_runs_the_model_on_the_asked_device_and_dtype(tmp_path, device):
    """predict --device/--dtype: the model and every batch (ids, mask, MI depths) go there; the
    depths are the CPU float32 run's exactly, the labels its labels (bfloat16: nearly all), and a
    shard made in another dtype or on another device is never reused as this run's."""
    from adaptive_encoder.data import load_dataset
    from adaptive_encoder.predict import predict, shard_fingerprint
    from test_distributed import _tiny_checkpoint

    # Words the MI table has seen (many depths) and words the tiny model's vocabulary has.
    texts = [f"{t} w{(7 * i) % 95} w{(3 * i + 1) % 95}" for i, t in enumerate(load_dataset("trec")["test"].texts[:40])]
    ckpt = _tiny_checkpoint(tmp_path, "mi", limit=60, spread_on=texts)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        for dev in sorted({"cpu", device}):
            out = tmp_path / f"{dev}_{dtype}.jsonl"
            summary = predict(str(ckpt), texts, str(out), batch_size=8, progress=False, device=dev, dtype=dtype)
            assert summary["computed_texts"] == 40 and 0 < summary["token_layer_fraction"] < 1
            runs[dev, dtype] = [json.loads(line) for line in out.read_text().splitlines()]
    base = runs["cpu", torch.float32]
    assert len({r["depth_mean"] for r in base}) > 3  # MI depths, not one fixed depth
    assert len({r["label"] for r in base}) > 1
    for (dev, dtype), rows in runs.items():
        assert [r["index"] for r in rows] == list(range(40))
        assert [r["depth_mean"] for r in rows] == [r["depth_mean"] for r in base], (dev, dtype)
        same = sum(r["label"] == b["label"] for r, b in zip(rows, base))
        assert same == 40 if dtype == torch.float32 else same >= 36, (dev, dtype, same)
    keys = {shard_fingerprint(str(ckpt), texts, list(range(40)), None, "runs/depths", dev, str(dtype))
            for dev in ("cpu", "cuda") for dtype in (torch.float32, torch.bfloat16)}
    assert len(keys) == 4


def test_local_device_names_what_cannot_run(monkeypatch):
    from adaptive_encoder import distributed

    assert distributed.local_device("cpu") == torch.device("cpu")
    for spec in ("tpu", "nonsense", "meta"):
        with pytest.raises(ValueError, match="expected cpu, cuda or cuda:N"):
            distributed.local_device(spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        distributed.local_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.local_device("cuda") == torch.device("cuda", 0)
    assert distributed.local_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="GPU 2 asked for, 2 visible$"):
        distributed.local_device("cuda:2")
    monkeypatch.setattr(distributed, "world_size", lambda: 3)  # under torchrun: GPU = LOCAL_RANK
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match=r"GPU 2 asked for, 2 visible \(one per process on this machine\)"):
        distributed.local_device("cuda")
    with pytest.raises(ValueError, match="under torchrun pass --device cuda"):
        distributed.local_device("cuda:0")


@pytest.mark.parametrize("device", DEVICES)
def test_demo_on_a_device(device, capsys):
    from adaptive_encoder.__main__ import main

    assert main(["demo", "--hidden", "32", "--layers", "2", "--batch", "2", "--seq", "6", "--repeats", "1",
                 "--device", device]) == 0
    out = capsys.readouterr().out
    assert f"on {device}" in out and "relative error" in out


def test_process_group_follows_the_device(monkeypatch):
    """gloo for the CPU (DistributedDataParallel over CPU parameters fails on an nccl group,
    which `torchrun ... train` used on any machine with a GPU before); gloo + nccl for a GPU."""
    import torch.distributed as dist

    from adaptive_encoder import distributed

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.append(backend))
    for device in (None, "cpu", "cuda", "cuda:1", "nonsense"):
        assert distributed.init_from_env(*([] if device is None else [device]))
    assert seen == ["gloo", "gloo", "cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl", "gloo"]


@pytest.mark.parametrize("command", ["demo", "estimate-depths", "train", "experiment", "sweep-layers", "evaluate",
                                     "predict"])
def test_a_device_that_cannot_run_is_refused_before_any_work(command, monkeypatch, tmp_path):
    from adaptive_encoder.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = {"evaluate": [str(tmp_path)], "predict": [str(tmp_path), "--input", "x", "--out", "y"]}.get(command, [])
    with pytest.raises(SystemExit, match=r"^error: --device cuda: CUDA is not available here"):
        main([command, *argv, "--device", "cuda"])
