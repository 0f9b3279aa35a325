"""Every CLI flag does what it says: help with defaults, ranges, paths, no abbreviations,
and every command the README documents parses."""
import re
import shlex
from pathlib import Path

import pytest

from adaptive_encoder.__main__ import build_parser, main
from conftest import needs_minilm

COMMANDS = ["demo", "estimate-depths", "train", "evaluate", "experiment", "sweep-layers"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default:" in out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    undocumented = [a.dest for a in sub._actions if not a.help]
    assert undocumented == [], f"{command}: options without help text: {undocumented}"


def _readme_commands():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        for part in line.split("&&"):
            m = re.search(r"-m adaptive_encoder (.+)$", part.strip())  # python -m ... and torchrun ... -m ...
            if m:
                cmds.append(shlex.split(m.group(1).split("#")[0].split("`")[0]))  # inline code ends at `
    return cmds


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv, tmp_path, monkeypatch):
    parser = build_parser()
    # Paths a command names must exist for the parser: give it a scratch copy of each.
    for i, a in enumerate(argv):
        if argv[i - 1] in ("--data", "--model") and i > 0:
            (tmp_path / "d").mkdir(exist_ok=True)
            argv = argv[:i] + [str(tmp_path / "d")] + argv[i + 1:]
    args = parser.parse_args(argv)
    assert args.func is not None


@pytest.mark.parametrize("argv,msg", [
    (["estimate-depths", "--layers", "0"], "--layers: must be >= 1, got 0"),
    (["estimate-depths", "--limit", "-5"], "--limit: must be >= 1, got -5"),
    (["train", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--lr", "0"], "--lr: must be > 0"),
    (["train", "--lr", "abc"], "expected a number"),
    (["train", "--model", "/nonexistent"], "folder /nonexistent does not exist"),
    (["train", "--dataset", "trec", "--data", "/x"], "folder /x does not exist"),
    (["train", "--data", "/x", "--dataset", "trec"], "folder /x does not exist"),
    (["train", "--dat", "/x"], "unrecognized arguments: --dat"),  # no abbreviations
    (["experiment", "--variants", "bogus"], "invalid choice"),
    (["demo", "--seq", "1"], "--seq: must be >= 2"),
    (["predict", "c", "--input", "i", "--out", "o", "--dtype", "float64"], "--dtype: invalid choice: 'float64'"),
])
def test_bad_flags_are_refused_naming_the_value(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_demo_checks_heads_and_runs_small(capsys):
    with pytest.raises(SystemExit, match="--heads 3 must divide --hidden 32"):
        main(["demo", "--hidden", "32", "--heads", "3"])
    assert main(["demo", "--hidden", "32", "--layers", "2", "--batch", "2", "--seq", "6", "--repeats", "1"]) == 0
    assert "relative error" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^error: --device cuda:99: (CUDA is not available|GPU 99 asked for)"):
        main(["demo", "--device", "cuda:99"])


@needs_minilm
def test_missing_depth_folder_is_an_error_not_a_long_job(tmp_path):
    with pytest.raises(SystemExit, match=f"^error: no reconstruction depths at {tmp_path}/nowhere/trec/depths_reconstruction.pt"):
        main(["train", "--depth", "reconstruction", "--depths", str(tmp_path / "nowhere"), "--limit", "5",
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--layers must be in 1..6"):
        main(["train", "--layers", "7", "--limit", "5", "--out", str(tmp_path)])


@needs_minilm
def test_train_then_evaluate_a_limited_checkpoint_says_so(tmp_path, capsys):
    """evaluate re-reads the checkpoint's data with its --limit: the accuracy it prints is on
    those few test texts, and the line says so (a smoke checkpoint's number is not the dataset's)."""
    assert main(["train", "--dataset", "trec", "--depth", "mi", "--layers", "2", "--epochs", "1", "--limit", "16",
                 "--out", str(tmp_path)]) == 0
    trained = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "trec_mi_N2_seed0")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trec mi N=2: accuracy ") and line.endswith("(on the first 16 test texts: trained with --limit)")
    accuracy = re.search(r"accuracy ([0-9.]+)%", line).group(1)
    assert f"test accuracy {accuracy}%" in trained  # the same model on the same texts
    # --dtype: the same depths, the accuracy within a text of float32's; a device that cannot
    # run is named before anything is loaded.
    assert main(["evaluate", str(tmp_path / "trec_mi_N2_seed0"), "--dtype", "bfloat16"]) == 0
    half = capsys.readouterr().out.strip().splitlines()[-1]
    assert "samples/s (cpu, bfloat16)" in half and "samples/s (cpu, float32)" in line
    assert abs(float(re.search(r"accuracy ([0-9.]+)%", half).group(1)) - float(accuracy)) <= 100 / 16
    assert re.search(r"avg depth ([0-9.]+)", half).group(1) == re.search(r"avg depth ([0-9.]+)", line).group(1)
    with pytest.raises(SystemExit, match=r"^error: --device cuda:99: (CUDA is not available|GPU 99 asked for)"):
        main(["evaluate", str(tmp_path / "trec_mi_N2_seed0"), "--device", "cuda:99"])
    # Other training data (here its lines reversed) refits other MI depths than the checkpoint's
    # table: evaluate and predict refuse it instead of running the model on depths it never saw.
    import shutil

    from adaptive_encoder.data import data_root

    other = tmp_path / "data"
    shutil.copytree(data_root(), other)
    train_file = other / "TREC.train.all"
    lines = train_file.read_bytes().splitlines(True)
    train_file.chmod(0o644)
    train_file.write_bytes(b"".join(reversed(lines)))
    (tmp_path / "in.txt").write_text("who was galileo ?\n")
    for argv in (["evaluate", str(tmp_path / "trec_mi_N2_seed0"), "--data", str(other)],
                 ["predict", str(tmp_path / "trec_mi_N2_seed0"), "--input", str(tmp_path / "in.txt"),
                  "--out", str(tmp_path / "p.jsonl"), "--data", str(other)]):
        with pytest.raises(SystemExit, match="^error: MI depths refitted on this training data differ"):
            main(argv)
    assert main(["predict", str(tmp_path / "trec_mi_N2_seed0"), "--input", str(tmp_path / "in.txt"),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
