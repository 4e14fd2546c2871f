import csv
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: thread start-up and oversubscription cost far more than a second thread saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a saved tiny classifier with its tokenizer."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: tiny.save_tiny_model(family, root / family) for family in tiny.FAMILIES}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, Path]:
    """A learnable two-class CSV set: train (240 rows), validation (80) and test (80)."""
    root = tmp_path_factory.mktemp("toy-data")
    return {
        "train": write_csv(root / "train.csv", tiny.toy_sentiment(240, seed=1)),
        "validation": write_csv(root / "validation.csv", tiny.toy_sentiment(80, seed=2)),
        "test": write_csv(root / "test.csv", tiny.toy_sentiment(80, seed=3)),
    }


def tiny_run_config(model_dir: Path, files: dict[str, Path], output_dir: Path, **training) -> dict:
    """A recipe dict for a fast run on a tiny model and the toy data."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "adapter": {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "data": {
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "test_file": str(files["test"]),
            "max_length": 32,
        },
        "training": {
            "output_dir": str(output_dir),
            "num_epochs": 6,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "log_every_steps": 5,
            "progress_bar": False,
            "seed": 0,
            **training,
        },
    }


WORD = {"positive": "good", "negative": "bad"}
"""The one-word answer of the causal-lm toy set, by label."""


@pytest.fixture(scope="session")
def generative_models(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a saved tiny T5 (text-to-text) or LLaMA (causal LM) with its tokenizer."""
    root = tmp_path_factory.mktemp("tiny-generative")
    return {family: tiny.save_tiny_generative_model(family, root / family) for family in ("t5", "llama")}


def _sentiment_words(text: str) -> str:
    return " ".join(w for w in text.split() if w in tiny.POSITIVE or w in tiny.NEGATIVE)


@pytest.fixture(scope="session")
def generative_files(tmp_path_factory) -> dict[str, Path]:
    """Learnable sets: label, the sentence's sentiment words (free seq2seq), a one-word answer (causal-lm)."""
    root = tmp_path_factory.mktemp("generative-data")
    files = {}
    for split, n, seed in (("train", 160, 1), ("validation", 32, 2)):
        rows = tiny.toy_sentiment(n, seed=seed)
        files[split] = write_csv(
            root / f"{split}.csv", [r | {"words": _sentiment_words(r["text"])} for r in rows]
        )
        chat = [{"prompt": r["text"], "response": WORD[r["label"]]} for r in rows]
        files[f"chat_{split}"] = write_csv(root / f"chat_{split}.csv", chat)
    return files
