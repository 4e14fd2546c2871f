"""The Python entry point: `finetune` runs a whole recipe, stage by stage.

validate config -> read and check data -> tokenizer -> model -> adapter ->
train loop -> evaluate -> save the adapter and the run record.
Every check that can fail on user input runs before the model weights load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from peftkit.adapters import apply_adapter, count_parameters
from peftkit.checkpoint import Checkpoints
from peftkit.config import ConfigError, RunConfig, apply_overrides, config_from_dict, load_recipe, validate
from peftkit.data import load_raw_splits, make_dataloader, tokenize
from peftkit.domain import LOSS_METHODS, STAGED_METHODS
from peftkit.domain.pretrain import stack_domain_adapter
from peftkit.domain.stages import run_staged
from peftkit.domain.terms import add_loss_term, loss_term_texts
from peftkit.domain.terms import summary as domain_summary
from peftkit.evaluate import evaluate
from peftkit.export import adapter_metadata, save_adapter
from peftkit.fastpaths import compile_model
from peftkit.io import write_json
from peftkit.model import load_model, load_tokenizer
from peftkit.strategies import (
    BACKBONE_METHODS,
    build_strategies,
    fisher_batches,
    prepare_backbone,
    source_rows,
    training_split,
)
from peftkit.strategies.features import feature_setup, save_feature_head
from peftkit.strategies.sampling import replay_dataloader
from peftkit.train import (
    MetricsLog,
    check_launch,
    enable_gradient_checkpointing,
    full_state_dict,
    prepare_for_training,
    resolve_mixed_precision,
    total_steps,
    train_loop,
    use_cpu_backend,
)

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    output_dir: Path
    adapter_dir: Path | None
    labels: list[str]
    metrics: dict[str, Any]
    """`validation` and (when a test file is given) `test` metrics, plus `train` throughput."""
    model: Any = None
    """The trained PeftModel, in eval mode (on the main process)."""
    tokenizer: Any = None


def build_config(
    config: RunConfig | str | Path | dict | None = None, overrides: list[str] | None = None, **fields: Any
) -> RunConfig:
    """A validated RunConfig from a recipe path, a dict or a RunConfig, then `overrides`, then `fields`.

    `fields` are flat names (`train_file=...`, `learning_rate=...`) looked up in
    whichever section defines them.
    """
    overrides = list(overrides or []) + [_dotted(k, v) for k, v in fields.items()]
    if isinstance(config, str | Path):
        return load_recipe(config, overrides)  # validated once, with the overrides applied
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config or {})
    return validate(config_from_dict(apply_overrides(values, overrides)))


_SECTIONS = ("model", "adapter", "data", "training", "export")


def _dotted(name: str, value: Any) -> str:
    if name == "task":
        return f"task={json.dumps(value)}"
    defaults = RunConfig()
    owners = [s for s in _SECTIONS if name in {f.name for f in dataclasses.fields(getattr(defaults, s))}]
    if len(owners) != 1:
        where = f"it is in {owners}; pass section.{name}=... in overrides" if owners else "no section has it"
        raise ConfigError(f"finetune(): unknown or ambiguous field {name!r}: {where}")
    return f"{owners[0]}.{name}={json.dumps(value)}"


def finetune(
    config: RunConfig | str | Path | dict | None = None, overrides: list[str] | None = None, **fields: Any
) -> FinetuneResult:
    """Fine-tune a classifier (or, by `config.task`, a generative model) and return its metrics and folder."""
    config = build_config(config, overrides, **fields)
    if config.task != "classification":
        from peftkit.generative import finetune_generative

        return finetune_generative(config)
    if config.data.tasks:  # one backbone, a head per task (strategies/multitask.py)
        from peftkit.strategies.multitask import finetune_multitask

        return finetune_multitask(config)
    if config.domain.method in STAGED_METHODS:  # several trainings, each a finetune call (peftkit.domain)
        return run_staged(config)
    t = config.training
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(t.mixed_precision),
        cpu=use_cpu_backend(),
    )
    check_launch(accelerator)
    checkpoints = Checkpoints.for_run(config, accelerator)  # refuses a mismatched resume before any loading
    set_seed(t.seed)
    raw = training_split(load_raw_splits(config.data, t.seed), config)  # k-shot, augmentation
    n = accelerator.num_processes
    target_texts = loss_term_texts(config, n) if config.domain.method in LOSS_METHODS else None
    tokenizer = load_tokenizer(config.model)
    rows = {n: tokenize(split, tokenizer, raw.labels, config.data, n) for n, split in _splits(raw).items()}
    loaded = load_model(config.model, raw.labels, tokenizer, config.adapter)
    if config.adapter.method in BACKBONE_METHODS:  # full fine-tuning or feature extraction: no adapter
        model = prepare_backbone(loaded.model, config.adapter.method)
    else:
        model = apply_adapter(loaded.model, config.adapter, loaded.family)
        if config.domain.stack_adapter:  # dapt_mode: stack (peftkit.domain)
            stack_domain_adapter(model, Path(config.domain.stack_adapter))
    source = source_rows(config, tokenizer, raw.labels)  # source-task data for EWC and replay
    if t.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    pad_multiple = 8 if accelerator.device.type == "cuda" else None

    def loader(name: str, batch_size: int, shuffle: bool):
        return make_dataloader(
            rows[name], tokenizer, batch_size, shuffle=shuffle, group_by_length=t.group_by_length,
            seed=t.seed, pad_to_multiple_of=pad_multiple,
        )  # fmt: skip

    method = config.adapter.method
    if method == "features":  # train a linear head on features computed once
        model, loader = feature_setup(loaded.model, rows, tokenizer, config, loaded.family.kind, t.seed)
    train_dl = loader("train", t.batch_size, shuffle=True)
    if config.data.replay_ratio > 0:
        train_dl = replay_dataloader(
            rows["train"], source, tokenizer, t.batch_size, config.data.replay_ratio, t.seed, pad_multiple
        )
    eval_dl = loader("validation", t.eval_batch_size, shuffle=False)
    if t.compile:
        model = compile_model(model)
    model, optimizer, scheduler, train_dl, eval_dl = prepare_for_training(
        accelerator, model, train_dl, eval_dl, t, config.adapter.loraplus_lr_ratio
    )
    num_labels = len(raw.labels)
    ewc_batches = fisher_batches(source, tokenizer, config, accelerator.device) if t.ewc_lambda > 0 else None
    strategies = build_strategies(config, model, len(train_dl) // t.gradient_accumulation_steps, ewc_batches)
    if target_texts is not None:  # DANN, CORAL, MMD: a loss term on a target batch at every step
        steps = total_steps(t, len(train_dl))
        domain_term = add_loss_term(
            strategies, config, model, tokenizer, loaded.family, target_texts, accelerator.device, steps
        )

    output_dir = Path(t.output_dir)
    resume_step = checkpoints.resume_step if checkpoints else None
    log = MetricsLog(output_dir / "metrics.jsonl" if accelerator.is_main_process else None, resume_step)
    result = train_loop(
        model,
        train_dl,
        t,
        accelerator,
        evaluate_fn=lambda: evaluate(model, eval_dl, accelerator, num_labels),
        log=log,
        checkpoints=checkpoints,
        optimizer=optimizer,
        scheduler=scheduler,
        step_hooks=strategies.step_hooks,
        regularizer=strategies.regularizer,
    )
    last = result.evaluations[-1] if result.evaluations else None
    validation = (
        last["eval"]
        if last and last["step"] == result.steps
        else evaluate(model, eval_dl, accelerator, num_labels)
    )
    metrics = {"validation": validation, "train": _train_metrics(result)}
    if target_texts is not None:
        metrics["domain"] = domain_summary(domain_term)
    if "test" in rows:
        test_dl = accelerator.prepare(loader("test", t.eval_batch_size, shuffle=False))
        metrics["test"] = evaluate(model, test_dl, accelerator, num_labels)
    trainable, total = count_parameters(model)
    metrics["parameters"] = {"trainable": trainable, "total": total}
    adapter_dir = _save_outputs(accelerator, model, loaded.model, tokenizer, config, raw.labels, metrics)
    logger.info("validation: %s", {k: round(v, 4) for k, v in validation.items()})
    return FinetuneResult(
        output_dir=output_dir, adapter_dir=adapter_dir, labels=raw.labels, metrics=metrics,
        model=accelerator.unwrap_model(model).eval(), tokenizer=tokenizer,
    )  # fmt: skip


def _train_metrics(result) -> dict:
    return {
        "steps": result.steps,
        "epochs": result.epochs,
        "samples": result.train_samples,
        "seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
        "losses": result.losses,
    }


def _save_outputs(
    accelerator, model, base_model, tokenizer, config: RunConfig, labels, metrics
) -> Path | None:
    """Write the trained weights (by method) and run.json from the main process; returns the weights folder.

    A collective: every process calls it (sharded weights are gathered first).
    """
    output_dir, method = Path(config.training.output_dir), config.adapter.method
    saved = None
    accelerator.wait_for_everyone()
    state_dict = full_state_dict(accelerator, model) if config.export.save_adapter else None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if config.export.save_adapter:
            metadata = adapter_metadata(config, labels, base_model if method == "features" else unwrapped)
            if method == "features":
                saved = save_feature_head(unwrapped, tokenizer, metadata, output_dir / "head")
            elif method == "full":  # a plain transformers model folder
                metadata |= {"format": "full"}
                saved = save_adapter(unwrapped, tokenizer, metadata, output_dir / "model", state_dict)
            else:
                saved = save_adapter(unwrapped, tokenizer, metadata, output_dir / "adapter", state_dict)
        write_json(output_dir / "run.json", _run_record(config, labels, metrics))
    accelerator.wait_for_everyone()
    return saved


def _splits(raw) -> dict:
    splits = {"train": raw.train, "validation": raw.validation}
    return splits | ({"test": raw.test} if raw.test is not None else {})


def _run_record(config: RunConfig, labels: list[str], metrics: dict) -> dict:
    import accelerate
    import peft
    import transformers

    from peftkit import __version__

    return {
        "config": config.to_dict(),
        "labels": labels,
        "metrics": metrics,
        "versions": {
            "peftkit": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
    }
