"""Find and check the modules an adapter targets and the head modules it trains in full."""

from __future__ import annotations

import difflib

import torch

from peftkit.config import ConfigError
from peftkit.families import Family


def _is_linear(module: torch.nn.Module) -> bool:
    # nn.Linear, bitsandbytes Linear4bit/8bitLt (subclasses) and GPT-2's Conv1D
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def linear_names(model: torch.nn.Module, exclude: list[str]) -> dict[str, list[str]]:
    """Short name -> full names of the linear layers outside the `exclude` modules."""
    found: dict[str, list[str]] = {}
    for full, module in model.named_modules():
        if not _is_linear(module) or any(part in exclude for part in full.split(".")):
            continue
        found.setdefault(full.rsplit(".", 1)[-1], []).append(full)
    return found


def targets_conv1d(model: torch.nn.Module, targets: list[str] | str) -> bool:
    """Whether the targeted layers are GPT-2-style `Conv1D`s (weight stored in x out: peft's `fan_in_fan_out`)."""
    for full, module in model.named_modules():
        if isinstance(targets, str) or full.rsplit(".", 1)[-1] in targets:
            if type(module).__name__ == "Conv1D":
                return True
    return False


def head_modules(model: torch.nn.Module, family: Family, extra: list[str] | None) -> list[str]:
    """Head modules present in `model`, plus any the recipe asks for (which must exist)."""
    names = {full.rsplit(".", 1)[-1] for full, _ in model.named_modules()}
    heads = [h for h in family.head_modules if h in names]
    for name in extra or []:
        if name not in names:
            raise ConfigError(f"adapter.modules_to_save: no module named {name!r} in the model")
        if name not in heads:
            heads.append(name)
    return heads


def resolve_target_modules(
    model: torch.nn.Module, family: Family, setting: str | list[str]
) -> list[str] | str:
    """Turn `adapter.target_modules` into names peft accepts, failing with the real candidates."""
    if setting == "all-linear" or (setting == "auto" and family.target_modules == ("all-linear",)):
        return "all-linear"
    candidates = linear_names(model, list(family.head_modules))
    wanted = list(family.target_modules) if setting == "auto" else list(setting)
    present = [name for name in wanted if name in candidates]
    missing = [name for name in wanted if name not in candidates]
    if setting == "auto" and present:
        return present
    if missing:
        close = {name: difflib.get_close_matches(name, list(candidates), n=2, cutoff=0.5) for name in missing}
        hints = "".join(
            f"{name!r}: did you mean {' or '.join(map(repr, m))}? " for name, m in close.items() if m
        )
        matched = f" (matched: {present})" if present else ""
        raise ConfigError(
            f"adapter.target_modules: {missing} match no linear layer of this {family.name} model{matched}. "
            f"{hints}Linear layers it has: {sorted(candidates)} (or use 'all-linear')"
        )
    return present
