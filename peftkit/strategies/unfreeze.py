"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): train the top layer group first, then one more per interval.

At step 0 only the head is trainable (for adapter methods, the head and the adapter weights
of the top block); every `every` optimizer steps the next layer group down becomes
trainable, until all are. With an adapter only the adapter weights of each block unfreeze,
never the frozen base weights.

The optimizer is built on every eventually-trainable parameter before the first call;
a frozen parameter gets no gradient, and AdamW skips parameters without one (no update,
no weight decay, no moment change), so nothing needs rebuilding when a group unfreezes.
"""

from __future__ import annotations

import logging

import torch

from peftkit.strategies.layers import LayerGroup, layer_groups

logger = logging.getLogger(__name__)


class GradualUnfreezer:
    """A step hook: `unfreezer(step)` sets which groups train after `step` optimizer steps."""

    def __init__(self, model: torch.nn.Module, every: int, adapter: bool = False):
        if every <= 0:
            raise ValueError(f"unfreeze interval must be > 0 steps, got {every}")
        self.every = every
        self.groups: list[LayerGroup] = layer_groups(model, trainable_only=True)
        # With an adapter the head and the top block's adapter start together: a head on a frozen
        # adapter stack is just a linear probe, and the top adapter is what ULMFiT's "last layer" is.
        self.first = 2 if adapter and len(self.groups) > 1 and self.groups[0].name == "head" else 1
        self.unfrozen = -1

    def groups_trainable_at(self, step: int) -> int:
        """How many groups (from the top) train after `step` optimizer steps."""
        return min(len(self.groups), self.first + step // self.every)

    def __call__(self, step: int) -> None:
        count = self.groups_trainable_at(step)
        if count == self.unfrozen:
            return
        for i, group in enumerate(self.groups):
            for param in group.parameters:
                param.requires_grad_(i < count)
        if self.unfrozen >= 0:
            logger.info(
                "step %d: unfroze %s", step, ", ".join(g.name for g in self.groups[self.unfrozen : count])
            )
        self.unfrozen = count
