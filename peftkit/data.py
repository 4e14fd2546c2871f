"""Labelled text data: read, check, map labels, tokenize once, and batch by length.

Files (CSV/TSV/JSON/JSONL/Parquet) and Hub datasets are read with `datasets`.
Every problem a user can fix in the data (missing file or column, empty split,
empty or masked labels, a single class, validation labels unseen in training, a
split with no text left after truncation) is raised as `DataError` with counts,
before any model is loaded.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from peftkit.config import DataConfig
from peftkit.io import contained

logger = logging.getLogger(__name__)

BUNDLED_DATA = Path(__file__).parent / "bundled"
IGNORE_INDEX = -100  # the label value losses skip (a masked label)
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Data that cannot train a classifier; the message says what is wrong, with counts."""


@dataclass
class RawSplits:
    """Untokenized splits and the label names (index = class id)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]


# ---------------------------------------------------------------- reading


def resolve_data_path(path: str) -> Path:
    """`bundled:FILE` -> a file shipped in `peftkit/bundled`; anything else is a local path."""
    if path.startswith("bundled:"):
        return contained(BUNDLED_DATA, path.removeprefix("bundled:"), "bundled data file")
    return Path(path).expanduser()


def read_file(path: str, quoting: str = "auto") -> datasets.Dataset:
    file = resolve_data_path(path)
    if not file.is_file():
        raise DataError(f"data file {str(file)!r} not found")
    suffix = file.suffix.lower()
    if suffix not in _BUILDERS:
        raise DataError(f"data file {file.name!r}: unsupported format; use one of {', '.join(_BUILDERS)}")
    if _no_rows(file, suffix):
        raise DataError(f"data file {str(file)!r} has no data rows (0 rows)")
    kwargs = {}
    if suffix in (".csv", ".tsv"):
        none = quoting == "none" or (quoting == "auto" and suffix == ".tsv")
        kwargs = {"delimiter": "\t" if suffix == ".tsv" else ",", "quoting": csv.QUOTE_NONE if none else 0}
    try:
        dataset = datasets.load_dataset(_BUILDERS[suffix], data_files=str(file), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(f"data file {str(file)!r} could not be read: {err}") from err
    return dataset


def _no_rows(file: Path, suffix: str) -> bool:
    """A CSV/TSV with at most a header line, or an empty JSONL file (datasets' own error says little)."""
    if suffix not in (".csv", ".tsv", ".jsonl"):
        return False
    needed = 1 if suffix == ".jsonl" else 2
    with file.open(errors="replace") as f:
        lines = 0
        for line in f:
            lines += bool(line.strip())
            if lines >= needed:
                return False
    return True


def read_splits(
    config: DataConfig, seed: int, columns: list[str] | None = None
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset | None]:
    """(train, validation, test) as configured and checked; validation is carved from train when not given.

    `columns`: the columns every split must have, with no empty value (default: text and label columns).
    """
    if config.dataset:
        train = datasets.load_dataset(config.dataset, config.dataset_config, split=config.train_split)
        validation = (
            datasets.load_dataset(config.dataset, config.dataset_config, split=config.validation_split)
            if config.validation_split
            else None
        )
    else:
        train = read_file(config.train_file, config.csv_quoting)
        validation = read_file(config.validation_file, config.csv_quoting) if config.validation_file else None
    test = read_file(config.test_file, config.csv_quoting) if config.test_file else None
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None:
            _check_split(name, split, config, columns)
    if config.max_train_samples:
        train = train.shuffle(seed=seed).select(range(min(config.max_train_samples, len(train))))
    if validation is None:
        parts = train.train_test_split(test_size=config.validation_ratio, seed=seed)
        train, validation = parts["train"], parts["test"]
    return train, validation, test


# ---------------------------------------------------------------- checking and labels


def load_raw_splits(config: DataConfig, seed: int) -> RawSplits:
    """Read, check and label the splits. Raises DataError before any model work."""
    train, validation, test = read_splits(config, seed)
    splits = {"train": train, "validation": validation} | ({"test": test} if test is not None else {})
    counts = {name: dict(Counter(list(split[config.label_column]))) for name, split in splits.items()}
    if len(counts["train"]) < 2 and not config.label_names:
        raise DataError(
            f"training data has a single class {list(counts['train'])}: a classifier needs at least two. "
            f"Label counts per split: {counts}"
        )
    labels = label_names(list(train[config.label_column]), config.label_names)
    for name, split in splits.items():
        unseen = Counter(str(v) for v in split[config.label_column] if _label_key(v, config) not in labels)
        if unseen:
            raise DataError(
                f"{name} split has labels never seen in training: {dict(unseen)} "
                f"(training labels: {labels}; label counts per split: {counts}); fix the data or add "
                f"examples of them to training"
            )
    logger.info(
        "data: %s rows per split, labels %s, per-split label counts %s",
        {n: len(s) for n, s in splits.items()},
        labels,
        counts,
    )
    return RawSplits(train=train, validation=validation, test=test, labels=labels)


def _check_split(name: str, split: datasets.Dataset, config: DataConfig, columns: list[str] | None) -> None:
    if len(split) == 0:
        raise DataError(f"{name} split is empty (0 rows)")
    if columns is not None:
        _check_columns(name, split, columns)
        return
    needed = [config.text_column, config.label_column] + (
        [config.text_pair_column] if config.text_pair_column else []
    )
    for column in needed:
        if column not in split.column_names:
            raise DataError(
                f"{name} split has no column {column!r}; its columns are {split.column_names}. "
                f"Set data.text_column / data.label_column to the right names"
            )
    empty = sum(1 for v in split[config.label_column] if v is None or (isinstance(v, str) and not v.strip()))
    if empty:
        raise DataError(f"{name} split: {empty} of {len(split)} rows have an empty {config.label_column!r}")
    masked = sum(1 for v in split[config.label_column] if str(v).strip() == str(IGNORE_INDEX))
    if masked:
        every = "every label is masked: " if masked == len(split) else ""
        raise DataError(
            f"{name} split: {every}{masked} of {len(split)} rows have {config.label_column!r} = {IGNORE_INDEX} "
            f"(the ignore index, a masked label, which a classifier cannot learn from); remove those rows"
        )
    no_text = sum(1 for v in split[config.text_column] if v is None)
    if no_text:
        raise DataError(f"{name} split: {no_text} of {len(split)} rows have an empty {config.text_column!r}")


def _check_columns(name: str, split: datasets.Dataset, columns: list[str]) -> None:
    for column in columns:
        if column not in split.column_names:
            raise DataError(
                f"{name} split has no column {column!r}; its columns are {split.column_names}. "
                "Set the data.*_column fields to the right names"
            )
        empty = sum(1 for v in split[column] if v is None or (isinstance(v, str) and not v.strip()))
        if empty:
            raise DataError(f"{name} split: {empty} of {len(split)} rows have an empty {column!r}")


def label_names(values: list, names: list[str] | None) -> list[str]:
    """Class names in id order: `names` for integer labels 0..n-1, else the sorted distinct values."""
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    if names:
        ints = [v for v in distinct if isinstance(v, int)]
        if len(ints) != len(distinct) or min(ints) < 0 or max(ints) >= len(names):
            raise DataError(f"data.label_names has {len(names)} names but the labels are {distinct}")
        return list(names)
    if len(distinct) < 2:
        raise DataError(f"training data has a single class {distinct}: a classifier needs at least two")
    return [str(v) for v in distinct]


def _label_key(value, config: DataConfig) -> str:
    if config.label_names and isinstance(value, int) and 0 <= value < len(config.label_names):
        return config.label_names[value]
    return str(value)


# ---------------------------------------------------------------- tokenizing and batching


def tokenize(
    split: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
    config: DataConfig,
    split_name: str = "a",
) -> list[dict]:
    """Tokenize once (truncating, not padding) and map labels to ids; rows as plain dicts for fast indexing.

    Raises DataError when truncation leaves no text token in any row of the split.
    """
    label2id = {name: i for i, name in enumerate(labels)}
    texts = list(split[config.text_column])
    pairs = list(split[config.text_pair_column]) if config.text_pair_column else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=config.max_length)
    _check_text_left(encoded["input_ids"], tokenizer, config.max_length, split_name)
    keys = list(encoded.keys())
    rows = []
    for i, value in enumerate(split[config.label_column]):
        row = {k: encoded[k][i] for k in keys}
        row["labels"] = label2id[_label_key(value, config)]
        rows.append(row)
    return rows


def _check_text_left(input_ids: list[list[int]], tokenizer, max_length: int, split_name: str) -> None:
    """Refuse a split whose every row holds only special tokens after templating and truncation."""
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # an unknown word is still text
    empty = sum(1 for ids in input_ids if all(i in special for i in ids))
    if empty and empty == len(input_ids):
        raise DataError(
            f"{split_name} split: every one of its {len(input_ids)} rows holds no text token after templating and "
            f"truncation to data.max_length={max_length} (only special tokens are left); raise data.max_length "
            f"or check data.text_column"
        )
    if empty:
        logger.warning(
            "%s split: %d of %d rows hold no text token after truncation", split_name, empty, len(input_ids)
        )


class LengthGroupedBatchSampler:
    """Batches of similar-length examples, in shuffled order; reshuffled each epoch with `seed + epoch`.

    As in transformers' `group_by_length`: shuffle, cut into mega-batches of
    `mega_batch_factor * batch_size`, sort each by length, split into batches,
    then shuffle the batches so lengths are not seen in order.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        shuffle: bool = True,
        group_by_length: bool = True,
        seed: int = 0,
        mega_batch_factor: int = 50,
    ):
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.mega = mega_batch_factor * batch_size
        self.epoch = 0
        self.drop_last = False  # read by accelerate when it shards the sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        if not self.group_by_length:
            yield from (order[i : i + self.batch_size] for i in range(0, n, self.batch_size))
            return
        batches = []
        for start in range(0, n, self.mega):
            chunk = sorted(order[start : start + self.mega], key=lambda j: -self.lengths[j])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        yield from batches


def make_dataloader(
    rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    *,
    shuffle: bool,
    group_by_length: bool = True,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
    collate_fn=None,
) -> DataLoader:
    """Dynamic padding (to the longest in the batch) over length-grouped batches; `collate_fn` replaces
    the padding collator (generative tasks: labels padded with -100, or packing)."""
    sampler = LengthGroupedBatchSampler(
        [len(r["input_ids"]) for r in rows],
        batch_size,
        shuffle=shuffle,
        group_by_length=group_by_length,
        seed=seed,
    )
    collator = collate_fn or DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
    )
    # Its own generator: each pass draws a worker seed, which must not come from the global RNG that
    # dropout uses, or a resumed run would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_sampler=sampler, collate_fn=collator, generator=generator)
