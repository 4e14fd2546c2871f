"""Discriminative (layer-wise) learning rates: each layer group learns at lr * decay ** depth.

ULMFiT (Howard & Ruder 2018) and the layer-wise decay of ELECTRA/BEiT fine-tuning:
the head (depth 0) learns at the peak rate, each group below it at `decay` times
the rate of the group above. Every group becomes two AdamW parameter groups (with
and without weight decay). Warmup and every schedule work unchanged: a
transformers schedule multiplies each group's initial rate by the same factor.
"""

from __future__ import annotations

import torch

from peftkit.strategies.layers import layer_groups


def layerwise_param_groups(
    model: torch.nn.Module, learning_rate: float, decay: float, weight_decay: float
) -> list[dict]:
    """AdamW parameter groups over the trainable parameters, with `lr` = learning_rate * decay ** depth.

    Each group carries its layer group's `name` and `depth` (extra keys AdamW keeps and ignores).
    """
    groups = []
    for group in layer_groups(model, trainable_only=True):
        lr = learning_rate * decay**group.depth
        with_decay = [p for p in group.parameters if p.ndim >= 2]
        without = [p for p in group.parameters if p.ndim < 2]
        for params, wd in ((with_decay, weight_decay), (without, 0.0)):
            if params:
                groups.append(
                    {"params": params, "lr": lr, "weight_decay": wd, "name": group.name, "depth": group.depth}
                )
    return groups
