"""Loaders for the paper's text-classification datasets (one `<label> <text>` per line).

Files are read where they are: `root` argument (the CLI's `--data DIR`), else
$ADAPTIVE_ENCODER_DATA, else `../shared/data` beside the repository when the package runs
from a checkout; an installed package has no such folder and says how to point at the data. Each file is decoded with its real encoding
(TREC.train, MR and Subj are Latin-1, the rest UTF-8); a wrong codec would raise or
silently corrupt a few hundred lines.
"""
import os
import random
from dataclasses import dataclass
from pathlib import Path

# name -> {split: (file, encoding)}; MR and Subj ship unsplit (the paper uses 5-fold CV).
DATASETS = {
    "trec": {"train": ("TREC.train.all", "latin-1"), "test": ("TREC.test.all", "utf-8")},
    "mr": {"all": ("rt-polarity.all", "latin-1")},
    "subj": {"all": ("subj.all", "latin-1")},
    "sst2": {"train": ("stsa.binary.train", "utf-8"), "dev": ("stsa.binary.dev", "utf-8"),
             "test": ("stsa.binary.test", "utf-8")},
}


@dataclass
class Split:
    texts: list   # list[str], as in the file (tokenised, mostly lower-cased)
    labels: list  # list[int]

    @property
    def words(self) -> list:
        """Each text as a list of whitespace-separated words."""
        return [t.split() for t in self.texts]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "Split":
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])


HOW_TO_POINT = "pass --data DIR (root= in Python) or set ADAPTIVE_ENCODER_DATA to the folder holding the data files"


def data_root(root=None) -> Path:
    if root is not None:
        return Path(root)
    if os.environ.get("ADAPTIVE_ENCODER_DATA"):
        return Path(os.environ["ADAPTIVE_ENCODER_DATA"])
    repo = Path(__file__).resolve().parent.parent
    if (repo / "setup.py").is_file() and (repo / "adaptive_encoder").is_dir():  # running from a checkout
        return repo.parent / "shared" / "data"
    raise FileNotFoundError(f"no data folder known for an installed adaptive_encoder: {HOW_TO_POINT}")


def read_file(path, encoding: str) -> Split:
    texts, labels = [], []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            label, _, text = line.partition(" ")
            if not label.lstrip("-").isdigit() or not text:
                raise ValueError(f"{path}:{lineno}: expected '<label> <text>', got {line[:60]!r}")
            labels.append(int(label))
            texts.append(text.strip())
    return Split(texts, labels)


def load_dataset(name: str, root=None, test_fraction: float = 0.1, seed: int = 0) -> dict:
    """{split: Split}. Unsplit datasets (MR, Subj) get a fixed, seeded train/test split."""
    key = name.lower().replace("-", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    base = data_root(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data folder {base} not found: {HOW_TO_POINT}")
    splits = {s: read_file(base / f, enc) for s, (f, enc) in DATASETS[key].items()}
    if "all" in splits:
        data = splits.pop("all")
        order = list(range(len(data)))
        random.Random(seed).shuffle(order)
        n_test = int(round(len(order) * test_fraction))
        splits["test"], splits["train"] = data.subset(order[:n_test]), data.subset(order[n_test:])
    return splits


def kfold(n: int, k: int = 5, seed: int = 0):
    """k (train_idx, test_idx) pairs over range(n), shuffled once with `seed`."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    folds = [order[i::k] for i in range(k)]
    return [([j for f in folds[:i] + folds[i + 1:] for j in f], folds[i]) for i in range(k)]
