"""Few-shot sampling and text augmentation: exact counts, deterministic per seed."""

import datasets
import pytest
import tiny
from conftest import tiny_run_config

from peftkit.api import finetune
from peftkit.data import DataError
from peftkit.strategies.sampling import augment_texts, augmented, k_shot


def toy(n=60):
    return datasets.Dataset.from_list(tiny.toy_sentiment(n, seed=4))


def test_k_shot_exactly_k_per_class_and_seeded():
    split = toy()
    picked = k_shot(split, "label", 5, seed=1)
    assert sorted(picked["label"]) == ["negative"] * 5 + ["positive"] * 5
    assert list(picked["text"]) == list(k_shot(split, "label", 5, seed=1)["text"])
    assert set(picked["text"]) != set(k_shot(split, "label", 5, seed=2)["text"])
    assert set(picked["text"]) <= set(split["text"])


def test_k_shot_refuses_classes_with_fewer_rows():
    with pytest.raises(DataError, match="fewer rows"):
        k_shot(toy(10), "label", 8, seed=0)


def test_augmentation_is_seeded_and_changes_text():
    texts = [r["text"] for r in tiny.toy_sentiment(40, seed=6)]
    deleted = augment_texts(texts, ("delete",), 0.3, seed=0)
    assert deleted == augment_texts(texts, ("delete",), 0.3, seed=0)
    assert deleted != augment_texts(texts, ("delete",), 0.3, seed=1)
    for before, after in zip(texts, deleted, strict=True):
        words, kept = before.split(), after.split()
        assert 1 <= len(kept) <= len(words) and all(w in words for w in kept)
    assert sum(len(a.split()) for a in deleted) < sum(len(t.split()) for t in texts)
    swapped = augment_texts(texts, ("swap",), 0.2, seed=0)
    assert all(sorted(a.split()) == sorted(t.split()) for a, t in zip(swapped, texts, strict=True))
    assert (
        sum(a != t for a, t in zip(swapped, texts, strict=True)) > 30
    )  # most change (a swap may repeat words)


def test_augmented_split_adds_copies_with_labels():
    split = toy(10)
    bigger = augmented(split, "text", ("delete", "swap"), 0.2, copies=2, seed=0)
    assert len(bigger) == 30
    assert list(bigger["label"]) == list(split["label"]) * 3
    assert list(bigger["text"])[:10] == list(split["text"])


def test_few_shot_run(tiny_models, toy_files, tmp_path):
    recipe = tiny_run_config(
        tiny_models["bert"], toy_files, tmp_path, num_epochs=10, batch_size=8, learning_rate=2e-3
    )
    recipe["adapter"] = {"method": "full"}
    recipe["data"] |= {"k_shot": 16, "augment": "delete+swap", "augment_copies": 2}
    result = finetune(recipe)
    assert result.metrics["train"]["samples"] == 10 * 32 * 3  # 16 per class, x3 with two augmented copies
    assert result.metrics["test"]["accuracy"] >= 0.8
