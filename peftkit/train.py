"""The training loop: one readable loop over Accelerate.

prepare -> (accumulate -> forward -> backward -> clip -> step) -> log -> evaluate.
Works unchanged on one CPU, one GPU or many processes under `accelerate launch`.
The loss is kept on the device and read back only at logging steps, so the
loop adds no host-device sync per step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftkit.config import TrainingConfig

logger = logging.getLogger(__name__)


def resolve_mixed_precision(setting: str) -> str:
    """`auto` -> bf16 on a GPU that has it, else no mixed precision."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW on the trainable parameters; no weight decay on biases and norms (1-d tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise RuntimeError("the model has no trainable parameters: the adapter was not attached")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused or None)


def total_steps(config: TrainingConfig, batches_per_epoch: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_epochs * batches_per_epoch / config.gradient_accumulation_steps))


class MetricsLog:
    """Append-only JSONL log of training and evaluation records, written by the main process only."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class TrainResult:
    steps: int
    epochs: float
    train_samples: int
    train_seconds: float
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def train_loop(
    model: torch.nn.Module,
    train_dataloader: DataLoader,
    config: TrainingConfig,
    accelerator: Accelerator,
    evaluate_fn: Callable[[], dict] | None = None,
    log: MetricsLog | None = None,
) -> TrainResult:
    """Train `model` (already prepared by `accelerator`) and return what happened.

    `evaluate_fn` is called every `eval_every_steps` optimizer steps, or at each
    epoch end when that is 0; its metrics go to the log.
    """
    log = log or MetricsLog(None)
    sampler = train_dataloader.batch_sampler
    batches_per_epoch = len(train_dataloader)
    steps = total_steps(config, batches_per_epoch)
    optimizer = build_optimizer(model, config)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * steps),
        num_training_steps=steps,
    )
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    params = [p for p in model.parameters() if p.requires_grad]
    epochs = math.ceil(steps * config.gradient_accumulation_steps / batches_per_epoch)
    result = TrainResult(steps=0, epochs=0.0, train_samples=0, train_seconds=0.0)
    progress = tqdm(
        total=steps,
        desc="train",
        disable=not (accelerator.is_main_process and config.progress_bar),
        unit="step",
    )
    running_loss = torch.zeros((), device=accelerator.device)
    running_count = 0
    model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        _set_epoch(sampler, epoch)
        for batch in train_dataloader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach().float()
            running_count += 1
            result.train_samples += batch["labels"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            result.steps += 1
            progress.update(1)
            if result.steps % config.log_every_steps == 0 or result.steps == steps:
                mean_loss = accelerator.reduce(running_loss, reduction="mean").item() / running_count
                running_loss.zero_()
                running_count = 0
                result.losses.append(mean_loss)
                record = {
                    "step": result.steps,
                    "epoch": round(epoch + 1e-9, 4),
                    "loss": mean_loss,
                    "lr": scheduler.get_last_lr()[0],
                }
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                if accelerator.is_main_process:
                    log.write(record)
            at_eval_step = config.eval_every_steps and result.steps % config.eval_every_steps == 0
            if evaluate_fn is not None and at_eval_step:
                result.train_seconds += time.perf_counter() - started
                _run_eval(evaluate_fn, result, log, accelerator, epoch)
                started = time.perf_counter()
            if result.steps >= steps:
                break
        result.train_seconds += time.perf_counter() - started
        result.epochs = round(result.steps * config.gradient_accumulation_steps / batches_per_epoch, 4)
        if evaluate_fn is not None and not config.eval_every_steps:
            _run_eval(evaluate_fn, result, log, accelerator, epoch)
        started = time.perf_counter()
        if result.steps >= steps:
            break
    progress.close()
    return result


def _set_epoch(sampler, epoch: int) -> None:
    # accelerate wraps our sampler in BatchSamplerShard under several processes
    inner = getattr(sampler, "batch_sampler", sampler)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


def _run_eval(
    evaluate_fn, result: TrainResult, log: MetricsLog, accelerator: Accelerator, epoch: int
) -> None:
    metrics = evaluate_fn()
    record = {"step": result.steps, "epoch": epoch + 1, "eval": metrics}
    result.evaluations.append(record)
    if accelerator.is_main_process:
        log.write(record)
    logger.info("step %d: %s", result.steps, {k: round(v, 4) for k, v in metrics.items()})
