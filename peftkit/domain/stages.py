"""Domain-adaptation methods that run several trainings, each one `api.finetune` call on a derived recipe.

- `dapt`: continued pre-training on the target text (`pretrain.py`), then task training from the merged base
  (`dapt_mode: merge`) or on the original base with the domain adapter frozen under the task adapter (`stack`).
- `intermediate`: task training on `domain.intermediate_file`, the adapter merged into the base, then task
  training on `data.*` from it (the head carries over when the label count matches).
- `self_training`: source training, then `domain.rounds` rounds of pseudo-labelling and retraining.

Stage outputs go to sub-folders of `training.output_dir`; the last stage writes the usual outputs there.
The result is the last stage's, with `metrics["domain"]` describing the earlier stages.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter
from pathlib import Path

from peftkit.config import ConfigError, RunConfig
from peftkit.domain.features import read_target_texts
from peftkit.domain.selftrain import predict_probabilities, pseudo_labels

logger = logging.getLogger(__name__)


def run_staged(config: RunConfig):
    """Run the staged `domain.method` of `config` (validated) and return the last stage's FinetuneResult."""
    from peftkit.data import load_raw_splits

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # stages save and reload merged bases from one process
        raise ConfigError(f"domain.method: {config.domain.method} runs on one process only for now")
    raw = load_raw_splits(config.data, config.training.seed)  # data errors surface before any training
    runner = {"dapt": _dapt, "intermediate": _intermediate, "self_training": _self_training}
    return runner[config.domain.method](config, raw)


def _stage(config: RunConfig, output_dir: Path, **sections) -> RunConfig:
    """A copy of `config` without domain adaptation, writing to `output_dir`, with `sections` fields changed."""
    stage = copy.deepcopy(config)
    stage.domain.method = "none"
    stage.training.output_dir = str(output_dir)
    for section, fields in sections.items():
        for name, value in fields.items():
            setattr(getattr(stage, section), name, value)
    return stage


def _dapt(config: RunConfig, raw):
    from peftkit.api import finetune
    from peftkit.domain.pretrain import continued_pretraining
    from peftkit.model import load_tokenizer

    texts = read_target_texts(config)
    out, stack = Path(config.training.output_dir), config.domain.dapt_mode == "stack"
    tokenizer = load_tokenizer(config.model)
    pretrained = continued_pretraining(config, texts, tokenizer, out / "dapt", merge=not stack)
    if stack:  # the original base, the domain adapter frozen under the task adapter
        stage = _stage(config, out, domain={"stack_adapter": str(pretrained.adapter_dir)})
    else:
        stage = _stage(config, out, model={"name_or_path": str(pretrained.base_dir)})
    result = finetune(stage)
    result.metrics["domain"] = {
        "method": "dapt",
        "dapt_mode": config.domain.dapt_mode,
        "target_texts": len(texts),
        "pretrain_losses": pretrained.losses,
        "pretrain_adapter": str(pretrained.adapter_dir),
        "base": stage.model.name_or_path,
    }
    return result


def _intermediate(config: RunConfig, raw):
    from peftkit.api import finetune

    dc, out = config.domain, Path(config.training.output_dir)
    first = _stage(
        config, out / "intermediate",
        data={"train_file": dc.intermediate_file, "validation_file": None, "test_file": None,
              "max_train_samples": dc.intermediate_max_samples, "k_shot": None},
        training={"num_epochs": dc.intermediate_epochs, "max_steps": -1},
        export={"save_adapter": False},
    )  # fmt: skip
    source = finetune(first)
    base_dir = out / "intermediate" / "merged"
    model = source.model.merge_and_unload() if hasattr(source.model, "merge_and_unload") else source.model
    model.save_pretrained(base_dir)
    source.tokenizer.save_pretrained(base_dir)
    result = finetune(_stage(config, out, model={"name_or_path": str(base_dir)}))
    result.metrics["domain"] = {
        "method": "intermediate",
        "intermediate_validation": source.metrics["validation"],
        "intermediate_labels": source.labels,
        "base": str(base_dir),
    }
    return result


def _self_training(config: RunConfig, raw):
    from peftkit.api import finetune

    dc, d, out = config.domain, config.data, Path(config.training.output_dir)
    texts = read_target_texts(config)
    result = finetune(_stage(config, out / "round-0"))
    rounds = []
    for r in range(1, dc.rounds + 1):
        probabilities = predict_probabilities(
            result.model, result.tokenizer, texts, config.training.eval_batch_size, d.max_length
        )
        chosen = pseudo_labels(probabilities, dc.threshold, dc.class_balanced)
        counts = Counter(result.labels[c] for c in chosen.labels)
        logger.info(
            "self-training round %d: %d of %d target texts pseudo-labelled %s",
            r,
            len(chosen.indices),
            len(texts),
            dict(counts),
        )
        rounds.append(
            {
                "round": r,
                "pseudo_labels": len(chosen.indices),
                "per_class": dict(counts),
                "labelled_by": _scores(result),
            }
        )
        files = _write_round_files(
            raw, config, [texts[i] for i in chosen.indices], chosen.labels, out / f"round-{r}"
        )
        last = r == dc.rounds
        result = finetune(_stage(config, out if last else out / f"round-{r}", data=files))
    result.metrics["domain"] = {"method": "self_training", "target_texts": len(texts), "rounds": rounds}
    return result


def _scores(result) -> dict:
    """Validation (and test) accuracy of a stage's model."""
    return {
        split: result.metrics[split]["accuracy"]
        for split in ("validation", "test")
        if split in result.metrics
    }


def _write_round_files(raw, config: RunConfig, texts: list[str], label_ids: list[int], folder: Path) -> dict:
    """Source training rows plus pseudo-labelled rows, and the validation split, as JSONL; the data fields to use."""
    d = config.data
    folder.mkdir(parents=True, exist_ok=True)
    value_of = {}  # class name -> a label value as the source file writes it
    for value in raw.train[d.label_column]:
        value_of.setdefault(_name(value, d), value)
    train = [
        {d.text_column: t, d.label_column: v}
        for t, v in zip(raw.train[d.text_column], raw.train[d.label_column], strict=True)
    ]
    train += [
        {d.text_column: t, d.label_column: value_of[raw.labels[c]]}
        for t, c in zip(texts, label_ids, strict=True)
    ]
    validation = [
        {d.text_column: t, d.label_column: v}
        for t, v in zip(raw.validation[d.text_column], raw.validation[d.label_column], strict=True)
    ]
    for name, rows in (("train", train), ("validation", validation)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "train_file": str(folder / "train.jsonl"),
        "validation_file": str(folder / "validation.jsonl"),
        "max_train_samples": None,
        "k_shot": None,  # already applied to the source rows written here
    }


def _name(value, d) -> str:
    if d.label_names and isinstance(value, int) and 0 <= value < len(d.label_names):
        return d.label_names[value]
    return str(value)
