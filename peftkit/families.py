"""Per-architecture knowledge: which linears an adapter targets, which modules form the head, where the blocks are.

Keyed by `config.model_type`. An architecture not listed here falls back to
`all-linear` targets and a head guessed from the model's structure, with a
warning (see `family_for`). `family_table_markdown` renders the table as the page
`docs/families.md` (written by `docs/make_family_table.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    target_modules: tuple[str, ...]
    """Attention and MLP linear layers (LoRA's default targets)."""
    head_modules: tuple[str, ...]
    """Modules of the *ForSequenceClassification head: trained in full and saved with the adapter."""
    kind: str
    """`encoder`, `encoder-decoder` or `decoder`."""
    blocks: tuple[str, ...] = ()
    """Module paths of the block lists in the *ForSequenceClassification model, bottom stack first
    (`bert.encoder.layer`); each block is one layer group (`strategies/layers.py` finds them by name)."""
    notes: str = ""
    """What is unusual about the architecture, for the family table."""


_BERT_LINEARS = ("query", "key", "value", "dense")
_T5_LINEARS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
_LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_T5_NOTES = (
    "`wi` (T5) or gated `wi_0`/`wi_1` (T5 v1.1, mT5); `encoder.final_layer_norm` joins the last encoder "
    "block, `decoder.final_layer_norm` the head group; the head pools the last `</s>`, so inputs need one"
)
_ROBERTA_NOTES = "the head is `dense` + `out_proj`: trained in full, so LoRA's `dense` leaves it alone"
_DECODER_NOTES = "the final norm `model.norm` is in the head group; the head pools the last non-pad token"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "bert",
            _BERT_LINEARS,
            ("classifier",),
            "encoder",
            ("bert.encoder.layer",),
            "the pretrained `bert.pooler` is in the head group and gets LoRA through `dense`",
        ),
        Family(
            "roberta", _BERT_LINEARS, ("classifier",), "encoder", ("roberta.encoder.layer",), _ROBERTA_NOTES
        ),
        Family(
            "xlm-roberta",
            _BERT_LINEARS,
            ("classifier",),
            "encoder",
            ("roberta.encoder.layer",),
            _ROBERTA_NOTES,
        ),
        Family(
            "electra",
            _BERT_LINEARS,
            ("classifier",),
            "encoder",
            ("electra.encoder.layer",),
            "`embeddings_project` (embedding width -> hidden width) is in the embeddings group; "
            + _ROBERTA_NOTES,
        ),
        Family(
            "distilbert",
            ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
            ("pre_classifier", "classifier"),
            "encoder",
            ("distilbert.transformer.layer",),
            "two head layers, both new",
        ),
        Family(
            "deberta-v2",
            ("query_proj", "key_proj", "value_proj", "dense"),
            ("pooler", "classifier"),
            "encoder",
            ("deberta.encoder.layer",),
            "the shared `encoder.rel_embeddings` and their `encoder.LayerNorm` are in the embeddings group",
        ),
        Family(
            "t5",
            _T5_LINEARS,
            ("classification_head",),
            "encoder-decoder",
            ("transformer.encoder.block", "transformer.decoder.block"),
            _T5_NOTES,
        ),
        Family(
            "mt5",
            _T5_LINEARS,
            ("classification_head",),
            "encoder-decoder",
            ("transformer.encoder.block", "transformer.decoder.block"),
            _T5_NOTES,
        ),
        Family(
            "bart",
            ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
            ("classification_head",),
            "encoder-decoder",
            ("model.encoder.layers", "model.decoder.layers"),
            "`layernorm_embedding` is in the embeddings group; the head pools the last `</s>`, so inputs "
            "need one; its `out_proj` is trained in full, not adapted",
        ),
        Family("llama", _LLAMA_LINEARS, ("score",), "decoder", ("model.layers",), _DECODER_NOTES),
        Family("mistral", _LLAMA_LINEARS, ("score",), "decoder", ("model.layers",), _DECODER_NOTES),
        Family("qwen2", _LLAMA_LINEARS, ("score",), "decoder", ("model.layers",), _DECODER_NOTES),
        Family("gemma", _LLAMA_LINEARS, ("score",), "decoder", ("model.layers",), _DECODER_NOTES),
        Family("gemma2", _LLAMA_LINEARS, ("score",), "decoder", ("model.layers",), _DECODER_NOTES),
        Family(
            "phi",
            ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
            ("score",),
            "decoder",
            ("model.layers",),
            "the final norm `model.final_layernorm` is in the head group",
        ),
        Family(
            "phi3",
            ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
            ("score",),
            "decoder",
            ("model.layers",),
            "fused `qkv_proj` and `gate_up_proj`; " + _DECODER_NOTES,
        ),
        Family(
            "gpt2",
            ("c_attn", "c_proj", "c_fc"),
            ("score",),
            "decoder",
            ("transformer.h",),
            "`Conv1D` layers (weight stored in x out): LoRA runs with `fan_in_fan_out=True`; "
            "the final norm `transformer.ln_f` is in the head group",
        ),
    ]
}

# Head names of classification models in transformers, for a model whose backbone cannot be told apart.
_KNOWN_HEADS = ("classifier", "score", "classification_head", "pre_classifier")


def family_for(model_type: str, model: torch.nn.Module | None = None) -> Family:
    """The family of `model_type`; unknown types fall back to all-linear targets and a guessed head, with a warning."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    heads = guess_head_modules(model) if model is not None else ("classifier", "score")
    logger.warning(
        "architecture %r has no peftkit family entry: targeting all linear layers ('all-linear') and "
        "training the guessed head %s in full. Set adapter.target_modules (and adapter.modules_to_save) "
        "to choose the layers yourself.",
        model_type,
        list(heads),
    )
    return Family(model_type, ("all-linear",), heads, "unknown")


def guess_head_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """The head of a *ForSequenceClassification model: its children with parameters outside the backbone.

    transformers keeps the backbone under `model.base_model` (`bert`, `model`, `transformer`...)
    and the head beside it, whatever the head's names (`classifier`, `score`, XLNet's
    `sequence_summary` + `logits_proj`).
    """
    base = getattr(model, "base_model", model)
    if base is not model:
        heads = tuple(
            name
            for name, child in model.named_children()
            if child is not base and any(True for _ in child.parameters())
        )
        if heads:
            return heads
    return tuple(h for h in _KNOWN_HEADS if hasattr(model, h))


_PAGE_HEADER = """# Model families

Generated from `FAMILIES` in `peftkit/families.py` by `python docs/make_family_table.py`: do not edit
by hand (`tests/test_families.py` fails when this page is out of date, and builds a tiny model of every
row to check it).

- **model_type**: the key, `config.model_type` of the checkpoint.
- **default LoRA targets**: what `adapter.target_modules: auto` resolves to; names a model lacks
  (`wi` on a gated T5) are dropped.
- **blocks**: where the transformer blocks sit. Layer groups, what `training.layerwise_lr_decay` and
  `training.gradual_unfreezing` act on, run top-down: the head group (the head, a pooler, the final
  norm), then the blocks from the last to the first (decoder blocks above encoder blocks), then the
  embeddings group at the bottom.
- **head**: the `*ForSequenceClassification` head modules: trained in full, saved with the adapter
  (peft's `modules_to_save`) and kept out of quantization.

"""


def family_table_markdown() -> str:
    """The page `docs/families.md`: `FAMILIES` as a markdown table, with what each column means."""
    rows = [
        "| model_type | kind | default LoRA targets | blocks (one layer group each) | head (trained in full, "
        "saved) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for f in FAMILIES.values():
        cells = [
            f"`{f.name}`",
            f.kind,
            _names(f.target_modules),
            _names(f"{path}.N" for path in f.blocks),
            _names(f.head_modules),
            f.notes,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        "| any other | unknown | `all-linear` (peft: every linear layer outside the head) | numbered blocks "
        "found by name (`layer.N`, `layers.N`, `block.N`, `h.N`), else one group `all` | the model's children "
        "outside `model.base_model` | a warning says what was guessed |"
    )
    return _PAGE_HEADER + "\n".join(rows) + "\n"


def _names(names) -> str:
    return ", ".join(f"`{n}`" for n in names)
