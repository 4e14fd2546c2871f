"""Wire the loss-term methods (`dann`, `coral`, `mmd`) into the one training loop's strategies."""

from __future__ import annotations

from peftkit.config import ConfigError, RunConfig
from peftkit.domain.alignment import AlignmentPenalty
from peftkit.domain.dann import DANN
from peftkit.domain.features import PooledFeatures, read_target_texts, target_batches
from peftkit.families import Family


def loss_term_texts(config: RunConfig, num_processes: int) -> list[str]:
    """The target texts for `dann`/`coral`/`mmd`, read before any model loads; refused on several processes."""
    if num_processes > 1:
        raise ConfigError(
            f"domain.method: {config.domain.method} runs a second (target) forward pass per step, which DDP "
            "cannot synchronise; run it on one process (no accelerate launch with several processes)"
        )
    return read_target_texts(config)


def add_loss_term(
    strategies, config: RunConfig, model, tokenizer, family: Family, texts: list[str], device, steps: int
):
    """Add the domain loss term to `strategies` (regularizer, and a step hook for DANN); returns the term.

    `model` is the prepared model the loop trains (one process: the extra target forward pass is not
    synchronised across DDP ranks). The term's `summary()` reports how the domain loss went.
    """
    dc, t = config.domain, config.training
    features = PooledFeatures(model, family.head_modules)
    batches = target_batches(texts, tokenizer, t.batch_size, config.data.max_length, t.seed, device)
    if dc.method == "dann":
        term = DANN(model, features, batches, steps, dc.weight, t.learning_rate)
        strategies.step_hooks.append(term.step_hook)
    else:
        term = AlignmentPenalty(model, features, batches, dc.method, dc.weight)
    previous = strategies.regularizer
    strategies.regularizer = term if previous is None else (lambda: previous() + term())
    return term


def summary(term) -> dict:
    """The term's summary; its hooks are removed (the model is returned to the caller clean)."""
    term.features.remove()
    return {"method": type(term).__name__, **term.summary()}
