"""Stacked LoRA adapters (the Stack of MAD-X; Pfeiffer et al. 2020): a frozen adapter under the trained one.

Both adapters are active in every forward pass, so each adapted layer computes
W x + B_task A_task x + B_frozen A_frozen x, and merging folds both updates into W.
The task adapter comes first in the active list, so a DoRA task adapter normalises its own
update on W alone, in the forward pass and when merging (peft merges in that order).
A run saves the task adapter (and head) at the top of its adapter folder and the frozen
one in the sub-folder `STACKED` (peft's layout for a non-default adapter); its peftkit.json
names that sub-folder under `"stacked"`.

Two peft 0.21.2 behaviours are worked around here, in one place:
`PeftModelForSequenceClassification.add_adapter` gives every added adapter its own copy of
the classifier head, and a head with several copies refuses several active adapters, so the
frozen adapter is added through `PeftModel.add_adapter`, which leaves the head alone; and
`set_adapter` marks every active adapter trainable, so the frozen one is frozen again after it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

TASK = "default"
"""The trained (task) adapter: peft's default name, saved at the top of the adapter folder."""
STACKED = "domain"
"""The frozen adapter under it, saved in the adapter folder's sub-folder of this name."""


def add_frozen_adapter(
    model: PeftModel, name: str, config: LoraConfig, weights: dict[str, torch.Tensor]
) -> None:
    """Add the LoRA adapter `name` with `weights` (keys as peft saves them) to `model`, frozen and without a head.

    Raises ValueError when a module the config targets gets no weights, or a weight has no module.
    """
    config = copy.deepcopy(config)
    config.modules_to_save, config.inference_mode, config.lora_dropout = None, True, 0.0
    # its random init is overwritten: keep the random stream (head init, dropout) as it would be without it
    with torch.random.fork_rng(devices=[]):
        PeftModel.add_adapter(model, name, config)  # not the classifier's override: it adds a head copy
    result = set_peft_model_state_dict(model, weights, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k and ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the {name!r} adapter does not fit the model: {len(missing)} of its weights are missing "
            f"(e.g. {missing[:2]}) and {len(result.unexpected_keys)} have no module "
            f"(e.g. {result.unexpected_keys[:2]})"
        )
    for param_name, param in model.named_parameters():
        if f".{name}." in param_name:
            param.requires_grad_(False)


def activate_stack(model: PeftModel, task: str = TASK, frozen: str = STACKED) -> None:
    """Make `task` and `frozen` the active adapters of `model`; only `frozen` stays frozen."""
    model.base_model.set_adapter([task, frozen])
    for name, param in model.named_parameters():
        if f".{frozen}." in name:
            param.requires_grad_(False)


def load_stacked(model: PeftModel, folder: Path, name: str = STACKED) -> None:
    """Load the frozen adapter saved in `folder/name` under `model`'s task adapter and activate both."""
    config = LoraConfig.from_pretrained(folder / name)
    weights = load_file(folder / name / "adapter_model.safetensors")
    add_frozen_adapter(model, name, config, weights)
    activate_stack(model, frozen=name)
