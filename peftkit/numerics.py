"""Numerical guards for the training loop: skip non-finite steps, stop after too many, keep fp32 masters.

A NaN/inf loss or gradient norm skips the optimizer step (the weights keep their last finite
values, so the last checkpoint and the weights in memory stay good) and, after
`training.max_bad_steps` such optimizer steps in a row, stops training with
`NonFiniteLossError`. Under fp16 with a loss scaler, overflowing gradients are the
scaler's business (it skips the update and lowers the scale), so only the loss is checked,
and the optimizer step is still called for the scaler to skip.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss or gradient norm was NaN/inf for `max_bad_steps` optimizer steps in a row."""


class BadStepGuard:
    """Counts consecutive optimizer steps with a non-finite loss or gradient norm.

    `observe(loss)` is called for every micro-batch (it stays on the device);
    `step_ok(grad_norm, step)` at each optimizer step reads one flag back (one host sync per
    optimizer step, only when the guard is on) and says whether to apply the step.
    """

    def __init__(self, max_bad_steps: int, accelerator, checkpoints=None):
        self.max_bad_steps = max_bad_steps
        self.accelerator = accelerator
        self.checkpoints = checkpoints
        self.bad_in_a_row = 0
        self._flag = torch.zeros((), device=accelerator.device)

    @property
    def enabled(self) -> bool:
        return self.max_bad_steps > 0

    def observe(self, loss: torch.Tensor) -> None:
        if self.enabled:
            self._flag += (~torch.isfinite(loss.detach().float())).float()

    def step_ok(self, grad_norm: torch.Tensor | float | None, step: int) -> bool:
        """Whether the optimizer step after `step` finite steps may be applied; raises after too many bad ones."""
        if not self.enabled:
            return True
        flag = self._flag.clone()
        self._flag.zero_()
        scaler = getattr(self.accelerator, "scaler", None)
        if grad_norm is not None and scaler is None:
            flag += (~torch.isfinite(torch.as_tensor(grad_norm, device=flag.device).float())).float()
        if self.accelerator.num_processes > 1:  # every process must skip the same steps
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() == 0:
            self.bad_in_a_row = 0
            return True
        self.bad_in_a_row += 1
        logger.warning(
            "non-finite loss or gradient norm after optimizer step %d: step skipped (%d of %d in a row allowed)",
            step,
            self.bad_in_a_row,
            self.max_bad_steps,
        )
        if self.bad_in_a_row >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"training stopped: the loss or gradient norm was NaN/inf for {self.bad_in_a_row} optimizer steps "
                f"in a row after step {step} (training.max_bad_steps={self.max_bad_steps}); no bad update was "
                f"applied. {self._last_checkpoint()} Lower training.learning_rate, use mixed_precision=bf16 or "
                f"no instead of fp16, or check the data"
            )
        return scaler is not None  # a loss scaler skips a non-finite update itself (and must step to reset)

    def _last_checkpoint(self) -> str:
        from peftkit.checkpoint import committed

        found = committed(self.checkpoints.folder) if self.checkpoints is not None else []
        if not found:
            return "No checkpoint was written."
        return f"The last good checkpoint is {str(found[-1])!r} (resume with --resume auto)."


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The total L2 norm of the gradients of `params` (None when none has a gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def upcast_trainable(model: torch.nn.Module) -> list[str]:
    """Keep trainable parameters in float32 (master weights) on a 16-bit base; return the modules cast.

    peft keeps adapter weights in float32 already, but the classifier head (`modules_to_save`) is a copy
    of the base's, in the base's dtype: with `model.dtype: float16` it would train in fp16, where small
    updates round away and AdamW's state overflows. Each cast module gets its floating inputs cast to
    float32 too, so it runs with or without autocast (under fp16/bf16 mixed precision autocast still
    runs the matmul in 16 bit, with float32 master weights, as in standard AMP).
    """
    cast = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and any(p.dtype in (torch.float16, torch.bfloat16) for p in own):
            for param in own:
                param.data = param.data.float()
            module.register_forward_pre_hook(_inputs_to_float32)
            cast.append(name)
    return cast


def _inputs_to_float32(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
