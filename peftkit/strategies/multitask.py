"""Multi-task transfer: one backbone (and adapter) shared by several classification tasks, one head per task.

Each training batch holds the rows of one task; which task is drawn per batch, seeded, with
p_i proportional to n_i (the task's training rows), to n_i^(1/T) (temperature-scaled sampling, as in
multilingual NMT and T5/mT5: T > 1 gives small tasks more batches than their share) or uniformly.
Batches carry a `task` index that `MultiTaskModel` routes to that task's head, so the one
training loop (`train.train_loop`) runs unchanged; each task is evaluated on its own validation set.

Saved as: `adapter/` (the backbone's peft adapter; `backbone/`, a plain transformers model, for `full`),
`heads.safetensors` (one linear head per task), `multitask.json` (tasks, labels, base model, pooling)
and the tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from peftkit.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

MULTITASK_FILE = "multitask.json"
HEADS_FILE = "heads.safetensors"
METHODS = ("lora", "full")
"""`adapter.method` choices a multi-task run supports: a LoRA adapter on the backbone, or all its weights."""


# ---------------------------------------------------------------- task sampling


def task_probabilities(sizes: list[int], sampling: str, temperature: float = 1.0) -> list[float]:
    """p_i over tasks of `sizes` rows: `proportional` (n_i), `temperature` (n_i^(1/T)) or `uniform`."""
    if sampling == "uniform":
        weights = [1.0] * len(sizes)
    elif sampling == "proportional":
        weights = [float(n) for n in sizes]
    elif sampling == "temperature":
        weights = [n ** (1.0 / temperature) for n in sizes]
    else:
        raise ValueError(f"unknown task sampling {sampling!r}; use proportional, temperature or uniform")
    total = sum(weights)
    return [w / total for w in weights]


class TaskBatchSampler:
    """Single-task batches over the concatenated rows of all tasks (task i at `offsets[i]`).

    An epoch has as many batches as the tasks' rows make (sum of ceil(n_i / batch_size)); each batch's task is
    drawn with `probabilities`, seeded with seed + epoch, and takes the next rows of that task's shuffled
    order (reshuffled when used up, so a task drawn more often than its share repeats its rows).
    """

    def __init__(self, sizes: list[int], batch_size: int, probabilities: list[float], seed: int = 0):
        self.sizes, self.batch_size, self.seed, self.epoch = list(sizes), batch_size, seed, 0
        self.probabilities = torch.tensor(probabilities, dtype=torch.float64)
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.drop_last = False  # read by accelerate when it shards the sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(math.ceil(n / self.batch_size) for n in self.sizes)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        tasks = torch.multinomial(self.probabilities, len(self), replacement=True, generator=generator)
        queues: list[list[int]] = [[] for _ in self.sizes]
        for task in tasks.tolist():
            if len(queues[task]) < self.batch_size:
                queues[task] += torch.randperm(self.sizes[task], generator=generator).tolist()
            take = min(self.batch_size, self.sizes[task])
            rows, queues[task] = queues[task][:take], queues[task][take:]
            yield [self.offsets[task] + i for i in rows]


# ---------------------------------------------------------------- the model


class MultiTaskModel(torch.nn.Module):
    """A backbone returning `last_hidden_state`, pooled, and a `ModuleDict` of linear heads, one per task.

    `forward(..., task=...)` takes the batch's task index (a tensor with one value per row, all the same)
    and returns `SequenceClassifierOutput` like a transformers classifier, so `train_loop` and
    `evaluate` work on it.
    """

    def __init__(self, backbone: torch.nn.Module, tasks: dict[str, int], pooling: str, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size if hasattr(backbone, "config") else backbone.hidden_size
        self.task_names = list(tasks)
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(hidden, n) for name, n in tasks.items()})
        self.dropout = torch.nn.Dropout(dropout)
        self.pooling = pooling
        from peftkit.strategies.features import _takes_token_types

        base = (
            backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        )  # peft: **kwargs
        self._token_types = _takes_token_types(base)

    def forward(self, input_ids, attention_mask, task, labels=None, token_type_ids=None, **kwargs):
        from peftkit.strategies.features import pool

        index = int(task[0])
        if bool((task != index).any()):
            raise ValueError("a multi-task batch must hold one task (use TaskBatchSampler)")
        extra = {"token_type_ids": token_type_ids} if self._token_types and token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        logits = self.heads[self.task_names[index]](self.dropout(pooled.float()))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def attach_backbone_adapter(model: torch.nn.Module, config: RunConfig, family) -> torch.nn.Module:
    """The backbone of a loaded classifier, with the recipe's LoRA adapter on it (`full`: all weights train)."""
    from peft import get_peft_model

    from peftkit.adapters.lora import build_lora_config
    from peftkit.strategies.features import backbone_of

    backbone = backbone_of(model)
    if config.adapter.method == "full":
        return backbone.requires_grad_(True)
    lora = build_lora_config(config.adapter, model, family)  # targets resolved on the whole model
    return get_peft_model(backbone, dataclasses.replace(lora, task_type=None, modules_to_save=None))


def head_dropout(backbone: torch.nn.Module) -> float:
    config = getattr(backbone, "config", None)
    return float(getattr(config, "hidden_dropout_prob", None) or getattr(config, "dropout_rate", None) or 0.1)


# ---------------------------------------------------------------- data


@dataclasses.dataclass
class TaskData:
    name: str
    labels: list[str]
    train: list[dict]
    validation: list[dict]


def task_data_config(config: RunConfig, task) -> object:
    """`config.data` with the task's files and columns (and no tasks), for `data.load_raw_splits` and `tokenize`."""
    return dataclasses.replace(
        config.data, train_file=task.train_file, validation_file=task.validation_file, test_file=None,
        text_column=task.text_column, label_column=task.label_column, label_names=task.label_names, tasks=None,
    )  # fmt: skip


def load_tasks(config: RunConfig, tokenizer) -> list[TaskData]:
    """Each task's tokenized train and validation rows, every row tagged with its task index."""
    from peftkit.data import load_raw_splits, tokenize

    tasks = []
    for index, task in enumerate(config.data.tasks):
        data = task_data_config(config, task)
        raw = load_raw_splits(data, config.training.seed)
        splits = {name: tokenize(split, tokenizer, raw.labels, data) for name, split in _splits(raw)}
        for rows in splits.values():
            for row in rows:
                row["task"] = index
        tasks.append(TaskData(task.name, raw.labels, splits["train"], splits["validation"]))
    return tasks


def _splits(raw):
    return (("train", raw.train), ("validation", raw.validation))


def task_dataloader(tasks: list[TaskData], tokenizer, config: RunConfig) -> DataLoader:
    """Training batches of one task each, tasks drawn as `training.task_sampling` says."""
    t = config.training
    sizes = [len(task.train) for task in tasks]
    probabilities = task_probabilities(sizes, t.task_sampling, t.task_temperature)
    logger.info(
        "task sampling (%s): %s",
        t.task_sampling,
        dict(zip([x.name for x in tasks], probabilities, strict=True)),
    )
    sampler = TaskBatchSampler(sizes, t.batch_size, probabilities, t.seed)
    rows = [row for task in tasks for row in task.train]
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return DataLoader(rows, batch_sampler=sampler, collate_fn=collator)


def evaluate_tasks(model, loaders: dict[str, DataLoader], accelerator, tasks: list[TaskData]) -> dict:
    """`NAME/accuracy`, `NAME/macro_f1`, `NAME/loss` per task, and their means as `accuracy`, `macro_f1`, `loss`."""
    from peftkit.evaluate import evaluate

    metrics = {}
    for task in tasks:
        scores = evaluate(model, loaders[task.name], accelerator, len(task.labels))
        metrics |= {f"{task.name}/{k}": v for k, v in scores.items()}
    for key in ("accuracy", "macro_f1", "loss"):
        metrics[key] = sum(metrics[f"{t.name}/{key}"] for t in tasks) / len(tasks)
    return metrics


# ---------------------------------------------------------------- validation


def check_multitask(config: RunConfig) -> None:
    """Refuse multi-task settings that cannot run (called by `strategies.check_strategies`)."""
    d, t = config.data, config.training
    if not d.tasks:
        raise ConfigError("data.tasks is an empty list; give at least two tasks, or unset it")
    names = [task.name for task in d.tasks]
    if len(names) < 2:
        raise ConfigError("data.tasks: one task is a single-task run; set data.train_file instead")
    for i, task in enumerate(d.tasks):
        if not task.name or not task.train_file:
            raise ConfigError(f"data.tasks[{i}]: set both name and train_file")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.tasks: task names must be unique, got {names}")
    if config.adapter.method not in METHODS:
        raise ConfigError(
            f"adapter.method: {config.adapter.method!r} is not supported with data.tasks; use one of {METHODS}"
        )
    if t.task_temperature <= 0:
        raise ConfigError(f"training.task_temperature: {t.task_temperature} must be > 0")
    unsupported = {
        "data.train_file / data.dataset": bool(d.train_file or d.dataset),
        "data.test_file": bool(d.test_file),
        "data.source_file (EWC, replay)": bool(d.source_file),
        "data.k_shot": d.k_shot is not None,
        "data.augment": d.augment != "none",
        "data.text_pair_column": bool(d.text_pair_column),
        "training.layerwise_lr_decay": t.layerwise_lr_decay is not None,
        "training.gradual_unfreezing": t.gradual_unfreezing,
        "training.l2sp_lambda": t.l2sp_lambda > 0,
        "training.save_every_steps / training.resume": bool(t.save_every_steps or t.resume),
        "training.gradient_checkpointing": t.gradient_checkpointing,
        "model.quantization": config.model.quantization != "none",
    }
    for key, on in unsupported.items():
        if on:
            raise ConfigError(f"{key} is not supported with data.tasks (multi-task runs); unset it")


# ---------------------------------------------------------------- run, save, load


def finetune_multitask(config: RunConfig):
    """Train one backbone (and adapter) with a head per task of `config.data.tasks`; `api.FinetuneResult`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from peftkit.adapters import count_parameters
    from peftkit.api import FinetuneResult, _run_record, _train_metrics
    from peftkit.data import make_dataloader
    from peftkit.io import write_json
    from peftkit.model import load_model, load_tokenizer
    from peftkit.strategies.features import resolve_pooling
    from peftkit.train import (
        MetricsLog,
        prepare_for_training,
        resolve_mixed_precision,
        train_loop,
        use_cpu_backend,
    )  # fmt: skip

    t = config.training
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(t.mixed_precision),
        cpu=use_cpu_backend(),
    )
    set_seed(t.seed)
    tokenizer = load_tokenizer(config.model)
    tasks = load_tasks(config, tokenizer)
    loaded = load_model(config.model, tasks[0].labels, tokenizer)
    pooling = resolve_pooling(config.model.pooling, loaded.family.kind)
    backbone = attach_backbone_adapter(loaded.model, config, loaded.family)
    sizes = {task.name: len(task.labels) for task in tasks}
    model = MultiTaskModel(backbone, sizes, pooling, head_dropout(backbone))
    eval_loaders = {
        task.name: make_dataloader(task.validation, tokenizer, t.eval_batch_size, shuffle=False)
        for task in tasks
    }
    model, optimizer, scheduler, train_dl, _ = prepare_for_training(
        accelerator, model, task_dataloader(tasks, tokenizer, config), None, t
    )
    eval_loaders = dict(zip(eval_loaders, accelerator.prepare(*eval_loaders.values()), strict=True))
    output_dir = Path(t.output_dir)
    result = train_loop(
        model, train_dl, t, accelerator,
        evaluate_fn=lambda: evaluate_tasks(model, eval_loaders, accelerator, tasks),
        log=MetricsLog(output_dir / "metrics.jsonl"), optimizer=optimizer, scheduler=scheduler,
    )  # fmt: skip
    last = result.evaluations[-1] if result.evaluations else None
    validation = (
        last["eval"]
        if last and last["step"] == result.steps
        else evaluate_tasks(model, eval_loaders, accelerator, tasks)
    )
    trainable, total = count_parameters(model)
    metrics = {"validation": validation, "train": _train_metrics(result)}
    metrics["parameters"] = {"trainable": trainable, "total": total}
    labels = {task.name: task.labels for task in tasks}
    saved = (
        save_multitask(model, tokenizer, config, labels, output_dir / "multitask")
        if config.export.save_adapter
        else None
    )
    write_json(output_dir / "run.json", _run_record(config, tasks[0].labels, metrics) | {"tasks": labels})
    return FinetuneResult(output_dir, saved, tasks[0].labels, metrics, model.eval(), tokenizer)


def save_multitask(
    model: MultiTaskModel, tokenizer, config: RunConfig, labels: dict, folder: str | Path
) -> Path:
    """Write the backbone's adapter (or, for `full`, the backbone), the heads and `multitask.json`."""
    from safetensors.torch import save_file

    from peftkit.io import atomic_dir, write_json

    with atomic_dir(folder) as tmp:
        model.backbone.save_pretrained(tmp / ("backbone" if config.adapter.method == "full" else "adapter"))
        heads = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
        save_file(heads, tmp / HEADS_FILE)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / MULTITASK_FILE,
            {
                "base_model": config.model.name_or_path,
                "base_model_revision": config.model.revision,
                "method": config.adapter.method,
                "pooling": model.pooling,
                "dropout": model.dropout.p,
                "max_length": config.data.max_length,
                "tasks": labels,
            },
        )
    return Path(folder)


def load_multitask(folder: str | Path, device: str = "cpu") -> tuple[MultiTaskModel, object, dict]:
    """(model in eval mode, tokenizer, multitask.json) from a `save_multitask` folder."""
    import json

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from peftkit.config import ModelConfig
    from peftkit.model import load_model

    folder = Path(folder)
    meta = json.loads((folder / MULTITASK_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta["method"] == "full":
        backbone = AutoModel.from_pretrained(folder / "backbone")
    else:
        from peftkit.strategies.features import backbone_of

        base = ModelConfig(name_or_path=meta["base_model"], revision=meta["base_model_revision"])
        first = next(iter(meta["tasks"].values()))
        backbone = PeftModel.from_pretrained(
            backbone_of(load_model(base, first, tokenizer).model), folder / "adapter"
        )
    sizes = {name: len(labels) for name, labels in meta["tasks"].items()}
    model = MultiTaskModel(backbone, sizes, meta["pooling"], meta["dropout"])
    model.heads.load_state_dict(load_file(folder / HEADS_FILE))
    return model.to(device).eval(), tokenizer, meta
