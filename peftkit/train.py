"""The training loop: one readable loop over Accelerate.

prepare -> (accumulate -> forward -> backward -> clip -> step) -> log -> evaluate -> checkpoint.
Works unchanged on one CPU, one GPU or many processes under `accelerate launch`.
The loss is kept on the device and read back only at logging steps; the NaN/inf
guard (`peftkit.numerics`, `training.max_bad_steps`; 0 turns it off) reads one scalar
per optimizer step, the loop's only host-device sync per step on one process.

Checkpoints (`peftkit.checkpoint`) are written every `save_every_steps` optimizer
steps. SIGTERM or SIGINT (pre-emption, Ctrl-C) lets the current optimizer step
finish, writes a checkpoint and raises `TrainingInterrupted`. A resumed run
skips the batches already consumed and restores every random generator, so it
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftkit.adapters.lora import parameter_groups
from peftkit.checkpoint import Checkpoints, Position
from peftkit.config import ConfigError, TrainingConfig
from peftkit.fastpaths import make_optimizer
from peftkit.numerics import BadStepGuard, grad_norm
from peftkit.strategies.lr import layerwise_param_groups

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training after a full optimizer step; `checkpoint` is where to resume from."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = (
            f"checkpoint {checkpoint}; resume with --resume auto" if checkpoint else "no checkpoint written"
        )
        super().__init__(f"training stopped by {signal_name} after optimizer step {step}: {where}")


# ---------------------------------------------------------------- setup


def resolve_mixed_precision(setting: str) -> str:
    """`auto` -> bf16 on a GPU that has it, else no mixed precision."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def use_cpu_backend() -> bool:
    """True for one of several launched processes on a machine without a GPU.

    Workaround, accelerate 1.15: `accelerate launch` starts several local processes only
    through its torchrun launcher (`distributed_type: MULTI_GPU`); without a GPU, its
    workers each run alone unless the Accelerator gets `cpu=True`, which joins them in
    one gloo process group (see recipes/accelerate/cpu_2proc.yaml).
    """
    if hasattr(torch, "accelerator"):
        has_device = torch.accelerator.is_available()
    else:
        has_device = torch.cuda.is_available()
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_device


def check_launch(accelerator: Accelerator) -> None:
    """Refuse, before anything loads, a launch whose trained adapter could not be saved.

    peft 0.21.2 finds adapter weights by module path, and FSDP1 puts its wrappers into those
    paths: measured on one H100, `save_pretrained` then wrote the classifier head and dropped
    every LoRA weight (reloaded accuracy 0.48 against 0.95). FSDP2 keeps the paths.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and not getattr(accelerator, "is_fsdp2", False):
        raise ConfigError(
            "accelerate launch config: FSDP version 1 cannot save the trained adapter (peft 0.21.2 drops the "
            "LoRA weights of FSDP1-wrapped models); set fsdp_config.fsdp_version: 2 (see "
            "recipes/accelerate/fsdp_qlora.yaml) or pass --fsdp_version 2"
        )


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass instead of storing them.

    Non-reentrant checkpointing lets gradients reach the adapters through frozen
    layers; the embedding outputs require grad too, as reentrant checkpointing needs.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        # transformers >= 5.2x: the new name, which also makes the embedding outputs require grad
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        base.enable_input_require_grads()


def build_optimizer(
    model: torch.nn.Module, config: TrainingConfig, loraplus_lr_ratio: float | None = None
) -> torch.optim.Optimizer:
    """`training.optimizer` (AdamW) on the trainable parameters; no weight decay on biases and norms (1-d tensors).

    With `layerwise_lr_decay`, one rate per layer group (`strategies.lr`); with
    `loraplus_lr_ratio` (LoRA+), the LoRA B matrices learn that many times faster.
    """
    if config.layerwise_lr_decay is not None:
        groups = layerwise_param_groups(
            model, config.learning_rate, config.layerwise_lr_decay, config.weight_decay
        )
    else:
        groups = parameter_groups(model, config.learning_rate, config.weight_decay, loraplus_lr_ratio)
    params = [p for group in groups for p in group["params"]]
    if not params:
        raise RuntimeError("the model has no trainable parameters: the adapter was not attached")
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    return make_optimizer(groups, config, fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, steps: int, num_processes: int = 1
):
    """The learning-rate schedule over `steps` optimizer steps.

    Once prepared, accelerate steps a schedule `num_processes` times per optimizer step
    (it counts single-process steps), so both counts are scaled by it: the rate at
    each optimizer step is then the same on any number of processes.
    """
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * steps) * num_processes,
        num_training_steps=steps * num_processes,
    )


def total_steps(config: TrainingConfig, batches_per_epoch: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_epochs * batches_per_epoch / config.gradient_accumulation_steps))


def prepare_for_training(
    accelerator: Accelerator,
    model,
    train_dataloader: DataLoader,
    eval_dataloader: DataLoader,
    config,
    loraplus_lr_ratio: float | None = None,
) -> tuple:
    """Prepare (model, optimizer, scheduler, train and eval dataloaders) for `accelerator`.

    The model is placed first and the optimizer built on the placed parameters (fused
    AdamW on GPU); DeepSpeed and FSDP2 instead need model and optimizer in one call.
    """
    n = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.DEEPSPEED or getattr(accelerator, "is_fsdp2", False):
        steps = total_steps(
            config, math.ceil(len(train_dataloader) / n)
        )  # the per-process length once sharded
        optimizer = build_optimizer(model, config, loraplus_lr_ratio)
        scheduler = build_scheduler(optimizer, config, steps, n)
        return accelerator.prepare(model, optimizer, scheduler, train_dataloader, eval_dataloader)
    model, train_dataloader, eval_dataloader = accelerator.prepare(model, train_dataloader, eval_dataloader)
    optimizer = build_optimizer(model, config, loraplus_lr_ratio)
    scheduler = build_scheduler(optimizer, config, total_steps(config, len(train_dataloader)), n)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    return model, optimizer, scheduler, train_dataloader, eval_dataloader


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict | None:
    """The model's whole state dict gathered from FSDP/DeepSpeed shards, else None (nothing to gather).

    A collective: every process calls it; under FSDP only process 0 gets the tensors.
    """
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return accelerator.get_state_dict(model)


# ---------------------------------------------------------------- bookkeeping


class MetricsLog:
    """Append-only JSONL log of training and evaluation records, written by the main process only.

    A resumed run passes its checkpoint's step as `keep_until_step`: records up to it
    are kept, later ones (written before the crash, about to be redone) are dropped.
    """

    def __init__(self, path: Path | None, keep_until_step: int | None = None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = _records_until(path, keep_until_step) if keep_until_step is not None else []
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _records_until(path: Path, step: int) -> list[str]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]


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


class _LossWindow:
    """Sum of the micro-batch losses since the last log, kept on the device."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().float()
        self.count += 1

    def flush(self, accelerator: Accelerator) -> float | None:
        """Mean loss over the window and over processes (a collective: every process calls it), then reset."""
        if not self.count:
            return None
        mean = accelerator.reduce(self.total, reduction="mean").item() / self.count
        self.total.zero_()
        self.count = 0
        return mean


class _Clock:
    """Seconds of training, evaluation and checkpoint writing excluded, counted on from `offset`."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.offset + time.perf_counter() - self.started

    @contextmanager
    def paused(self) -> Iterator[None]:
        before = time.perf_counter()
        try:
            yield
        finally:
            self.offset -= time.perf_counter() - before


class _StopOnSignal:
    """While active, SIGTERM and SIGINT set `signal_name` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere signals keep their
    usual effect. A second Ctrl-C (SIGINT) stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> _StopOnSignal:
        self.signal_name: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        if self.signal_name is None:
            logger.warning("%s: finishing the current optimizer step, then writing a checkpoint", name)
            self.signal_name = name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _stop_requested(stop: _StopOnSignal, accelerator: Accelerator) -> bool:
    """Whether any process got a stop signal; with several processes, one scalar all-reduce makes them agree."""
    if accelerator.num_processes == 1:
        return stop.signal_name is not None
    if stop.signal_name is not None:
        accelerator.set_trigger()
    return accelerator.check_trigger()


# ---------------------------------------------------------------- the loop


def train_loop(
    model: torch.nn.Module,
    train_dataloader: DataLoader,
    config: TrainingConfig,
    accelerator: Accelerator,
    evaluate_fn: Callable[[], dict] | None = None,
    log: MetricsLog | None = None,
    checkpoints: Checkpoints | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    step_hooks: list[Callable[[int], None]] = (),
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` (already prepared by `accelerator`) and return what happened.

    `evaluate_fn` is called every `eval_every_steps` optimizer steps, or at each
    epoch end (and the last step) when that is 0; its metrics go to the log.
    Without `optimizer` and `scheduler`, AdamW and the configured schedule are built
    here. `checkpoints` (when given) is saved to and, if it names one, resumed from.
    `step_hooks` (`strategies`) are called with the optimizer-step count at the start and after each
    optimizer step; `regularizer()` is added to the loss that is backpropagated (the log shows the task loss).
    """
    log = log or MetricsLog(None)
    batches_per_epoch = len(train_dataloader)
    steps = total_steps(config, batches_per_epoch)
    if optimizer is None:
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config, steps, accelerator.num_processes)
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    params = [p for p in model.parameters() if p.requires_grad]
    epochs = math.ceil(steps * config.gradient_accumulation_steps / batches_per_epoch)
    result, start = _resume(checkpoints, accelerator, model, optimizer, scheduler, batches_per_epoch)
    for hook in step_hooks:
        hook(result.steps)
    show = accelerator.is_main_process and config.progress_bar
    progress = tqdm(total=steps, initial=result.steps, desc="train", disable=not show, unit="step")
    window = _LossWindow(accelerator.device)
    guard = BadStepGuard(config.max_bad_steps, accelerator, checkpoints)
    clock = _Clock(result.train_seconds)
    model.train()
    with _StopOnSignal() as stop, progress:
        for epoch in range(start.epoch, epochs):
            if result.steps >= steps:
                break
            skip = start.batch if epoch == start.epoch else 0
            for batch_index, batch in enumerate(
                _epoch_batches(train_dataloader, epoch, skip, accelerator), skip + 1
            ):
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    guard.observe(loss)
                    accelerator.backward(loss + regularizer() if regularizer else loss)
                    finite = not accelerator.sync_gradients or guard.step_ok(
                        _clip(accelerator, params, config.max_grad_norm, guard.enabled), result.steps
                    )
                    if finite:  # a NaN/inf step is skipped: the weights keep their last finite values
                        optimizer.step()
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not finite:
                    continue
                window.add(loss)
                result.train_samples += _examples(batch) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                result.steps += 1
                for hook in step_hooks:
                    hook(result.steps)
                progress.update(1)
                at = round(epoch + batch_index / batches_per_epoch, 4)
                stopping = _stop_requested(stop, accelerator)
                saving = checkpoints is not None and (
                    stopping or _every(result.steps, config.save_every_steps)
                )
                if saving or _every(result.steps, config.log_every_steps) or result.steps == steps:
                    _log_loss(window, result, log, scheduler, accelerator, at, progress)
                end_of_epoch = batch_index >= batches_per_epoch
                if evaluate_fn is not None and _eval_due(config, result.steps, steps, end_of_epoch):
                    with clock.paused():
                        _run_eval(evaluate_fn, result, log, accelerator, at)
                saved = None
                if saving:
                    result.train_seconds = clock.seconds()
                    position = Position(epoch, batch_index, result.steps, accelerator.step)
                    with clock.paused():
                        saved = checkpoints.save(
                            accelerator, model, optimizer, scheduler, position, _progress(result)
                        )
                if stopping:
                    raise TrainingInterrupted(
                        stop.signal_name or "a signal to another process", result.steps, saved
                    )
                if result.steps >= steps:
                    break
    result.train_seconds = clock.seconds()
    result.epochs = round(result.steps * config.gradient_accumulation_steps / batches_per_epoch, 4)
    return result


def _clip(accelerator: Accelerator, params: list, max_grad_norm: float, need_norm: bool):
    """Clip the gradients to `max_grad_norm` (when > 0) and return their norm (None when not needed)."""
    if max_grad_norm > 0:
        return accelerator.clip_grad_norm_(params, max_grad_norm)
    return grad_norm(params) if need_norm else None


def _examples(batch: dict) -> int:
    """Examples in `batch`: its rows, or in a packed batch (no attention mask) the position-id restarts."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return int((batch["position_ids"] == 0).sum())
    return batch["labels"].shape[0]


def _every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _eval_due(config: TrainingConfig, step: int, steps: int, end_of_epoch: bool) -> bool:
    if config.eval_every_steps:
        return step % config.eval_every_steps == 0
    return end_of_epoch or step >= steps


def _resume(checkpoints, accelerator, model, optimizer, scheduler, batches_per_epoch: int):
    """(result so far, position to start from): zeros, or what the checkpoint to resume from holds."""
    result = TrainResult(steps=0, epochs=0.0, train_samples=0, train_seconds=0.0)
    if checkpoints is None or checkpoints.resume_from is None:
        return result, Position()
    position, progress = checkpoints.restore(accelerator, model, optimizer, scheduler)
    result = replace(result, steps=position.step, **progress)
    if position.batch >= batches_per_epoch:  # the checkpoint closed its epoch
        position = replace(position, epoch=position.epoch + 1, batch=0)
    return result, position


def _progress(result: TrainResult) -> dict:
    keys = ("losses", "evaluations", "train_samples", "train_seconds")
    return {key: getattr(result, key) for key in keys}


def _epoch_batches(dataloader, epoch: int, skip: int, accelerator: Accelerator):
    """The batches of `epoch` after its first `skip` (trained on before a resume); same order either way."""
    _set_epoch(dataloader, epoch)
    return accelerator.skip_first_batches(dataloader, skip) if skip else dataloader


def _set_epoch(dataloader, epoch: int) -> None:
    # accelerate's DataLoaderShard re-applies its own epoch counter on every pass, and wraps our
    # sampler (in BatchSamplerShard under several processes): set the counter and every sampler
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    sampler = getattr(dataloader, "batch_sampler", None)
    while sampler is not None:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        sampler = getattr(sampler, "batch_sampler", None)


def _log_loss(
    window: _LossWindow, result: TrainResult, log: MetricsLog, scheduler, accelerator, at, progress
):
    mean = window.flush(accelerator)
    if mean is None:
        return
    result.losses.append(mean)
    progress.set_postfix(loss=f"{mean:.4f}")
    if accelerator.is_main_process:
        log.write({"step": result.steps, "epoch": at, "loss": mean, "lr": scheduler.get_last_lr()[0]})


def _run_eval(evaluate_fn, result: TrainResult, log: MetricsLog, accelerator: Accelerator, at: float) -> None:
    metrics = evaluate_fn()
    record = {"step": result.steps, "epoch": at, "eval": metrics}
    result.evaluations.append(record)
    if accelerator.is_main_process:
        log.write(record)
    logger.info("step %d: %s", result.steps, {k: round(v, 4) for k, v in metrics.items()})
