"""Layer groups: a model's parameters split into its embeddings, its blocks and its head, from module names.

The unit of every layer-wise strategy (discriminative learning rates, gradual
unfreezing). Groups are ordered top-down: depth 0 is the head (classifier, pooler,
final norm), then the blocks from the last to the first (for encoder-decoder models
the decoder blocks above the encoder blocks), then the embeddings at the bottom.

Works on a plain transformers model, a PeftModel (an adapter weight belongs to the
block it sits in; a `modules_to_save` head copy to the head) and a model wrapped by
DDP (`module.` prefix). An architecture whose parameters name no numbered blocks
gets one group with a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

# `<stack>.<blocks>.<N>.`: BERT/RoBERTa/DeBERTa `encoder.layer.N`, DistilBERT `transformer.layer.N`,
# T5 `encoder.block.N` / `decoder.block.N`, BART `encoder.layers.N`, LLaMA-class `model.layers.N`, GPT-2 `h.N`.
_BLOCK = re.compile(r"(?:^|\.)(?:(?P<stack>encoder|decoder)\.)?(?:layer|layers|block|h)\.(?P<index>\d+)\.")
# Parameters outside the blocks that belong with the embeddings: the tables, what acts on them before the
# first block (ELECTRA's `embeddings_project`, BART's `layernorm_embedding`) and relative-position tables
# shared by all blocks (DeBERTa's `encoder.rel_embeddings` with its `encoder.LayerNorm`, MPNet's
# `encoder.relative_attention_bias`).
_EMBEDDING = re.compile(
    r"(?:^|\.)(?:embeddings|embed_tokens|embed_positions|shared|wte|wpe|prompt_encoder|embeddings_project"
    r"|layernorm_embedding|rel_embeddings|relative_attention_bias|encoder\.LayerNorm)\b"
)
_STACK_ORDER = {"decoder": 0, None: 1, "encoder": 2}  # top-down: decoder blocks sit above encoder blocks


@dataclass
class LayerGroup:
    name: str
    """`head`, `encoder.3`, `decoder.0`, `layers.5` (decoder-only and encoder-only stacks), `embeddings`, `all`."""
    depth: int = 0
    """0 for the top group (the head), growing towards the embeddings."""
    params: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.params]


def strip_wrappers(name: str) -> str:
    """A parameter name without DDP's `module.` and peft's `base_model.model.` prefixes."""
    name = name.removeprefix("module.").removeprefix("_orig_mod.")
    return name.removeprefix("base_model.model.")


def block_key(name: str) -> tuple[str | None, int] | None:
    """(stack, index) of the numbered block that parameter `name` sits in, or None."""
    match = _BLOCK.search(strip_wrappers(name))
    return (match["stack"], int(match["index"])) if match else None


def layer_groups(model: torch.nn.Module, trainable_only: bool = False) -> list[LayerGroup]:
    """The model's parameters in layer groups, top (head, depth 0) to bottom (embeddings).

    Parameters outside any block go to `embeddings` (embedding tables, what acts on them before the
    first block, shared relative-position tables, prompt encoders) or to
    the head (classifier, pooler, final norms), except an encoder's final norm in an
    encoder-decoder model, which joins the last encoder block. `trainable_only` keeps only
    parameters that require grad (and drops groups left empty).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    keys = {n: block_key(n) for n, _ in named}
    blocks = sorted({k for k in keys.values() if k}, key=lambda k: (_STACK_ORDER[k[0]], -k[1]))
    if not blocks:
        logger.warning(
            "no numbered blocks (encoder.layer.N, layers.N, block.N, h.N) among this model's parameter names: "
            "layer-wise strategies see it as one group"
        )
        return [LayerGroup("all", 0, named)]
    last_encoder = max((k for k in blocks if k[0] == "encoder"), key=lambda k: k[1], default=None)
    has_decoder = any(k[0] == "decoder" for k in blocks)
    by_key: dict[object, LayerGroup] = {"head": LayerGroup("head")}
    for depth, key in enumerate(blocks, 1):
        by_key[key] = LayerGroup(f"{key[0] or 'layers'}.{key[1]}", depth)
    by_key["embeddings"] = LayerGroup("embeddings", len(blocks) + 1)
    tables = _embedding_tables(model)
    for name, param in named:
        key = keys[name] or _outside_block(strip_wrappers(name), name in tables, last_encoder, has_decoder)
        by_key[key].params.append((name, param))
    groups = sorted(by_key.values(), key=lambda g: g.depth)
    return [g for g in groups if g.params] if trainable_only else groups


def _embedding_tables(model: torch.nn.Module) -> set[str]:
    """Names of the parameters of `nn.Embedding` modules (XLNet's `word_embedding` is named like no other)."""
    return {
        f"{module_name}.{name}".lstrip(".")
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.Embedding)
        for name, _ in module.named_parameters(recurse=False)
    }


def _outside_block(name: str, is_table: bool, last_encoder, has_decoder: bool) -> object:
    if is_table or _EMBEDDING.search(name):
        return "embeddings"
    if has_decoder and last_encoder is not None and re.search(r"(?:^|\.)encoder\.", name):
        return last_encoder  # T5's encoder.final_layer_norm, mBART's encoder.layer_norm
    return "head"


def describe(groups: list[LayerGroup]) -> str:
    """`head(4) layers.1(9) ...`: group names with parameter-tensor counts, for logs."""
    return " ".join(f"{g.name}({len(g.params)})" for g in groups)
