"""Transfer-learning strategies: how much of the model trains, at which rates, against what.

Each strategy is a recipe option and a plain function or tiny object that the one training
loop (`train.train_loop`) calls:

| option | module | what the loop gets |
|---|---|---|
| `adapter.method: full` / `features` | here (`prepare_backbone`), `features.py` | the model to train (all weights / a linear head on cached features) |
| `training.layerwise_lr_decay` | `lr.py` | optimizer parameter groups (`train.build_optimizer`) |
| `training.gradual_unfreezing` | `unfreeze.py` | a step hook |
| `training.ewc_lambda`, `training.l2sp_lambda` | `regularizers.py` | a penalty added to the loss |
| `data.replay_ratio`, `data.k_shot`, `data.augment` | `sampling.py` | training rows and batches |
| `data.tasks`, `training.task_sampling` | `multitask.py` | a model with one head per task, single-task batches |

Layer groups (`layers.py`) are what the layer-wise strategies act on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from peftkit.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

BACKBONE_METHODS = {
    "full": "full fine-tuning: every weight of the model trains, no adapter",
    "features": "feature extraction: the backbone stays frozen, a new linear head trains on cached features",
}
"""`adapter.method` choices that are not peft adapters."""


@dataclass
class Strategies:
    """What `train_loop` calls: hooks after each optimizer step (and once at the start), and a loss penalty."""

    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    regularizer: Callable[[], torch.Tensor] | None = None


def prepare_backbone(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """The model itself, every weight trainable (`full`) or frozen (`features`: only a new head trains)."""
    if method not in BACKBONE_METHODS:
        raise ValueError(f"{method!r} is an adapter method: use peftkit.adapters.apply_adapter")
    return model.requires_grad_(method == "full")


def build_strategies(
    config: RunConfig,
    model: torch.nn.Module,
    steps_per_epoch: int,
    source_batches: list[dict] | None = None,
) -> Strategies:
    """Step hooks and the regularizer the recipe asks for, on `model` (prepared, its optimizer built)."""
    from peftkit.strategies.regularizers import combine, ewc_penalty, l2sp_penalty
    from peftkit.strategies.unfreeze import GradualUnfreezer

    t = config.training
    penalties = []
    if t.ewc_lambda > 0:
        penalties.append(ewc_penalty(model, source_batches or [], t.ewc_lambda))
    if t.l2sp_lambda > 0:
        penalties.append(l2sp_penalty(model, t.l2sp_lambda))
    hooks = []
    if t.gradual_unfreezing:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # DDP registers its gradient buckets for the parameters trainable when it wraps the model
            raise ConfigError("training.gradual_unfreezing runs on one process only (not under DDP) for now")
        every = t.unfreeze_every_steps or max(1, steps_per_epoch)
        hooks.append(GradualUnfreezer(model, every, adapter=config.adapter.method not in BACKBONE_METHODS))
    return Strategies(step_hooks=hooks, regularizer=combine(penalties))


# ---------------------------------------------------------------- validation


def check_strategies(config: RunConfig) -> None:
    """Refuse strategy options out of range or in combinations that cannot work (called by `config.validate`)."""
    m, a, d, t = config.model, config.adapter, config.data, config.training
    if m.pooling != "auto" and a.method != "features":
        raise ConfigError(
            f"model.pooling: {m.pooling!r} applies to adapter.method: features, not {a.method!r}"
        )
    if t.layerwise_lr_decay is not None and not 0.0 < t.layerwise_lr_decay <= 1.0:
        raise ConfigError(
            f"training.layerwise_lr_decay: {t.layerwise_lr_decay} must be in (0, 1] (typical: 0.8-0.95), or null"
        )
    if t.layerwise_lr_decay is not None and a.loraplus_lr_ratio is not None:
        raise ConfigError(
            "training.layerwise_lr_decay and adapter.loraplus_lr_ratio both set the learning rate per "
            "parameter group; use one of them"
        )
    if t.unfreeze_every_steps < 0:
        raise ConfigError(
            "training.unfreeze_every_steps must be >= 0 (0 unfreezes one layer group per epoch)"
        )
    if t.unfreeze_every_steps and not t.gradual_unfreezing:
        raise ConfigError("training.unfreeze_every_steps is set but training.gradual_unfreezing is false")
    if t.gradual_unfreezing and t.resume:
        raise ConfigError(
            "training.gradual_unfreezing cannot resume from a checkpoint yet (the checkpoint holds only the "
            "groups unfrozen when it was written); set training.resume=null"
        )
    for name in ("ewc_lambda", "l2sp_lambda"):
        if getattr(t, name) < 0:
            raise ConfigError(f"training.{name}: {getattr(t, name)} must be >= 0 (0 turns it off)")
    if t.ewc_fisher_batches <= 0:
        raise ConfigError(f"training.ewc_fisher_batches: {t.ewc_fisher_batches} must be > 0")
    if not 0.0 <= d.replay_ratio < 1.0:
        raise ConfigError(f"data.replay_ratio: {d.replay_ratio} must be in [0, 1) (0 turns replay off)")
    if (t.ewc_lambda > 0 or d.replay_ratio > 0) and not d.source_file:
        raise ConfigError(
            "training.ewc_lambda and data.replay_ratio need source-task data: set data.source_file "
            "(same columns, labels within the target's label set)"
        )
    _check_sampling(d)
    if d.tasks is not None:
        from peftkit.strategies.multitask import check_multitask

        check_multitask(config)
    if a.method == "features":
        _check_features(config)


def _check_sampling(d) -> None:
    if d.k_shot is not None and d.k_shot <= 0:
        raise ConfigError(f"data.k_shot: {d.k_shot} must be > 0 (examples per class), or null for all")
    if not 0.0 < d.augment_prob < 1.0:
        raise ConfigError(f"data.augment_prob: {d.augment_prob} must be in (0, 1)")
    if d.augment_copies < 1:
        raise ConfigError(f"data.augment_copies: {d.augment_copies} must be >= 1")


def _check_features(config: RunConfig) -> None:
    d, t = config.data, config.training
    only_head = {
        "training.layerwise_lr_decay": t.layerwise_lr_decay is not None,
        "training.gradual_unfreezing": t.gradual_unfreezing,
        "training.ewc_lambda": t.ewc_lambda > 0,
        "training.l2sp_lambda": t.l2sp_lambda > 0,
        "training.gradient_checkpointing": t.gradient_checkpointing,
        "data.replay_ratio": d.replay_ratio > 0,
    }
    for key, on in only_head.items():
        if on:
            raise ConfigError(
                f"{key} does nothing with adapter.method: features (only a new linear head trains, on cached "
                f"features); unset it or use adapter.method: full or an adapter"
            )


# ---------------------------------------------------------------- data for the strategies


def training_split(raw, config: RunConfig):
    """`raw` (data.RawSplits) with its training split cut to `data.k_shot` per class and augmented as configured."""
    from peftkit.strategies.sampling import augmented, k_shot, parse_augment

    d, seed = config.data, config.training.seed
    train = raw.train
    if d.k_shot is not None:
        train = k_shot(train, d.label_column, d.k_shot, seed)
    if d.augment != "none":
        train = augmented(
            train, d.text_column, parse_augment(d.augment), d.augment_prob, d.augment_copies, seed
        )
    if train is not raw.train:
        logger.info(
            "training rows: %d -> %d (k_shot=%s, augment=%s)", len(raw.train), len(train), d.k_shot, d.augment
        )
    return dataclasses.replace(raw, train=train)


def source_rows(config: RunConfig, tokenizer, labels: list[str]) -> list[dict] | None:
    """Tokenized `data.source_file` rows (labels mapped into the target's label set), or None when not set."""
    from peftkit.data import DataError, read_file, tokenize

    d = config.data
    if not d.source_file:
        return None
    split = read_file(d.source_file, d.csv_quoting)
    if d.label_column not in split.column_names or d.text_column not in split.column_names:
        raise DataError(f"data.source_file: needs the columns {d.text_column!r} and {d.label_column!r}")
    unknown = sorted({str(v) for v in split[d.label_column]} - set(labels))
    if unknown and not d.label_names:
        raise DataError(
            f"data.source_file has labels {unknown} outside the training labels {labels}: the one head can only "
            "replay or weigh source examples of the target's classes"
        )
    return tokenize(split, tokenizer, labels, d)


def fisher_batches(rows: list[dict], tokenizer, config: RunConfig, device) -> list[dict]:
    """The first `training.ewc_fisher_batches` source batches (seeded order), on `device`."""
    from peftkit.data import make_dataloader

    t = config.training
    loader = make_dataloader(rows, tokenizer, t.batch_size, shuffle=True, group_by_length=False, seed=t.seed)
    batches = []
    for batch in loader:
        batches.append({k: v.to(device) for k, v in batch.items()})
        if len(batches) >= t.ewc_fisher_batches:
            break
    return batches
