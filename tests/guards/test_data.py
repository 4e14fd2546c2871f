"""Group 2, data errors: reported with counts per split before the model loads, and nothing written."""

from __future__ import annotations

import pytest
from conftest import tiny_run_config, write_csv

from peftkit.api import finetune
from peftkit.data import DataError


def rows(labels, text="good film"):
    return [{"text": f"{text} {i}", "label": label} for i, label in enumerate(labels)]


def run_on(tmp_path, tiny_models, train, validation=None, **data):
    """finetune on the given rows with a tiny BERT; the model loader is made to fail if reached."""
    files = (
        {"train": write_csv(tmp_path / "train.csv", train)} if isinstance(train, list) else {"train": train}
    )
    config = tiny_run_config(
        tiny_models["bert"], {**files, "validation": None, "test": None}, tmp_path / "out"
    )
    config["data"] = {"train_file": str(files["train"]), "max_length": 32, **data}
    if validation is not None:
        config["data"]["validation_file"] = str(write_csv(tmp_path / "validation.csv", validation))
    return finetune(config)


@pytest.fixture
def model_never_loads(monkeypatch):
    import peftkit.api

    def forbidden(*args, **kwargs):
        raise AssertionError("the model loaded before the data check")

    monkeypatch.setattr(peftkit.api, "load_model", forbidden)


def check(tmp_path, tiny_models, expected: list[str], *args, **kwargs):
    with pytest.raises(DataError) as err:
        run_on(tmp_path, tiny_models, *args, **kwargs)
    for text in expected:
        assert text in str(err.value), f"{text!r} not in {str(err.value)!r}"
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path, tiny_models, model_never_loads):
    check(tmp_path, tiny_models, ["data file", "missing.csv", "not found"], tmp_path / "missing.csv")


def test_missing_column_lists_the_columns(tmp_path, tiny_models, model_never_loads):
    train = [{"sentence": f"s {i}", "label": "ab"[i % 2]} for i in range(10)]
    check(
        tmp_path,
        tiny_models,
        ["train split has no column 'text'", "its columns are ['sentence', 'label']", "data.text_column"],
        train,
    )


def test_empty_split(tmp_path, tiny_models, model_never_loads):
    (tmp_path / "validation.csv").write_text("text,label\n")
    check(
        tmp_path,
        tiny_models,
        ["validation.csv", "has no data rows (0 rows)"],
        rows("ab" * 5),
        validation_file=str(tmp_path / "validation.csv"),
    )


def test_every_label_masked(tmp_path, tiny_models, model_never_loads):
    check(
        tmp_path,
        tiny_models,
        ["validation split: every label is masked: 4 of 4 rows have 'label' = -100", "ignore index"],
        rows([0, 1] * 5),
        validation=rows([-100] * 4),
    )


def test_some_labels_masked_are_counted(tmp_path, tiny_models, model_never_loads):
    check(
        tmp_path,
        tiny_models,
        ["train split: 3 of 10 rows have 'label' = -100"],
        rows([0, 1] * 2 + [-100] * 3 + [0] * 3),
    )


def test_no_text_left_after_templating_and_truncation(tmp_path, tiny_models, model_never_loads):
    # BERT's template adds [CLS] ... [SEP]: with max_length 2 nothing of any text is left
    check(
        tmp_path,
        tiny_models,
        ["train split: every one of its", "rows holds no text token", "data.max_length=2"],
        rows("ab" * 10),
        max_length=2,
    )


def test_validation_labels_unseen_in_training(tmp_path, tiny_models, model_never_loads):
    check(
        tmp_path,
        tiny_models,
        [
            "validation split has labels never seen in training: {'c': 2}",
            "training labels: ['a', 'b']",
            "label counts per split: {'train': {'a': 5, 'b': 5}, 'validation': {'a': 1, 'c': 2}}",
        ],
        rows("ab" * 5),
        validation=rows("acc"),
    )


def test_single_class(tmp_path, tiny_models, model_never_loads):
    check(
        tmp_path,
        tiny_models,
        [
            "training data has a single class ['a']",
            "Label counts per split: {'train': {'a': 8}, 'validation': {'a': 3}}",
        ],
        rows("a" * 8),
        validation=rows("aaa"),
    )


def test_empty_labels_are_counted(tmp_path, tiny_models, model_never_loads):
    (tmp_path / "train.csv").write_text("text,label\ngood,a\nbad,\nfine,b\nawful,\n")
    check(tmp_path, tiny_models, ["train split: 2 of 4 rows have an empty 'label'"], tmp_path / "train.csv")
