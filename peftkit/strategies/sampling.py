"""Which examples train, and how: k-shot subsets, text augmentation, and replay of source-task data.

- `k_shot`: exactly k examples per class, drawn with a seed (few-shot learning).
- `augment_texts`: random word deletion and random swap (EDA, Wei & Zou 2019), seeded.
- `ReplayBatchSampler`: every batch holds a fixed fraction of source-task examples
  (experience replay against catastrophic forgetting).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from peftkit.data import DataError

AUGMENTATIONS = ("delete", "swap")


# ---------------------------------------------------------------- few-shot


def k_shot(split: datasets.Dataset, label_column: str, k: int, seed: int) -> datasets.Dataset:
    """Exactly `k` rows of each class, drawn with `seed`, in a seeded shuffled order."""
    by_label: dict[object, list[int]] = defaultdict(list)
    for i, label in enumerate(split[label_column]):
        by_label[label].append(i)
    short = {str(label): len(rows) for label, rows in by_label.items() if len(rows) < k}
    if short:
        raise DataError(f"data.k_shot={k}: the training data has fewer rows for some labels: {short}")
    rng = random.Random(seed)
    chosen = [i for label in sorted(by_label, key=str) for i in rng.sample(by_label[label], k)]
    rng.shuffle(chosen)
    return split.select(chosen)


# ---------------------------------------------------------------- augmentation


def augment_text(text: str, ops: tuple[str, ...], prob: float, rng: random.Random) -> str:
    """`text` with each word deleted with probability `prob` (one always kept), then round(prob * words) swaps."""
    words = text.split()
    if "delete" in ops and len(words) > 1:
        kept = [w for w in words if rng.random() >= prob]
        words = kept or [rng.choice(words)]
    if "swap" in ops and len(words) > 1:
        for _ in range(max(1, round(prob * len(words)))):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


def augment_texts(texts: list[str], ops: tuple[str, ...], prob: float, seed: int) -> list[str]:
    """`augment_text` over `texts`, deterministic for a given `seed`."""
    rng = random.Random(seed)
    return [augment_text(t, ops, prob, rng) for t in texts]


def augmented(
    split: datasets.Dataset, text_column: str, ops: tuple[str, ...], prob: float, copies: int, seed: int
) -> datasets.Dataset:
    """`split` followed by `copies` augmented copies of it (copy c drawn with seed + c)."""
    texts = list(split[text_column])
    parts = [split]
    for c in range(copies):
        new = augment_texts(texts, ops, prob, seed + c)
        copy = split.remove_columns(text_column).add_column(text_column, new)
        parts.append(
            copy.select_columns(split.column_names).cast(split.features)
        )  # CSVs read as large_string
    return datasets.concatenate_datasets(parts)


def parse_augment(setting: str) -> tuple[str, ...]:
    """`delete+swap` -> ("delete", "swap"); `none` -> ()."""
    return () if setting == "none" else tuple(setting.split("+"))


# ---------------------------------------------------------------- replay


class ReplayBatchSampler:
    """Batches over `target rows + source rows` with `round(batch_size * ratio)` source rows in each.

    Target rows are shuffled each epoch (seed + epoch) and each seen once per epoch; source rows
    are drawn at random (without repeats inside a batch). Indexes >= `n_target` are source rows.
    """

    def __init__(self, n_target: int, n_source: int, batch_size: int, ratio: float, seed: int = 0):
        self.n_target, self.n_source = n_target, n_source
        self.n_replay = min(round(batch_size * ratio), n_source, batch_size - 1)
        self.n_new = batch_size - self.n_replay
        self.seed = seed
        self.epoch = 0
        self.drop_last = False  # read by accelerate when it shards the sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_target / self.n_new)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n_target, generator=generator).tolist()
        for start in range(0, self.n_target, self.n_new):
            replay = torch.randperm(self.n_source, generator=generator)[: self.n_replay]
            yield order[start : start + self.n_new] + (replay + self.n_target).tolist()


def replay_dataloader(
    rows: list[dict],
    source_rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    ratio: float,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
) -> DataLoader:
    """Training batches of `rows` with a `ratio` share of `source_rows` mixed into each."""
    sampler = ReplayBatchSampler(len(rows), len(source_rows), batch_size, ratio, seed)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows + source_rows, batch_sampler=sampler, collate_fn=collator, generator=generator)
