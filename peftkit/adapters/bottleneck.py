"""Bottleneck adapters as a peft method ("bottleneck", prefix ``bottleneck_``).

A bottleneck adapter is a small two-layer MLP, ``up(act(down(h)))`` with ``down: d -> d // reduction_factor``
and ``up: d // reduction_factor -> d``, inserted into every transformer block of a frozen model. Three
placements from the literature are implemented:

``placement="houlsby"``
    Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (ICML 2019): a sequential adapter
    after the attention output projection *and* after the feed-forward block, ``h <- h + adapter(h)``, applied
    to the sub-layer output before the block's skip connection and layer norm. For T5 this covers the encoder
    self-attention, the decoder self-attention and the decoder cross-attention output projections (``o``), plus
    every feed-forward output projection (``wo``).

``placement="pfeiffer"`` (default)
    Pfeiffer et al. 2020, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning" (EACL 2021):
    a single sequential adapter after the feed-forward block only. This is the single-task adapter
    architecture that the paper selects; the AdapterFusion *fusion layer* (attention over several trained
    adapters) is not implemented here.

``placement="parallel"``
    He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning" (ICLR 2022): a parallel
    adapter at the feed-forward sub-block, ``FFN(x) + scaling * up(act(down(x)))``, computed from the
    sub-block's *input* x and added to its output, before the residual connection. It is implemented by
    wrapping the whole feed-forward module, so that the adapter really sees the sub-block input and not the
    intermediate activation that the FFN's down projection receives:

    - LLaMA-class (``mlp``), T5 (``DenseReluDense``), DistilBERT (``ffn``): the wrapped module is called as
      ``module(x)``, the adapter reads the same x.
    - BERT/RoBERTa: the feed-forward block is split over ``BertIntermediate`` (``intermediate``) and
      ``BertOutput`` (``output``), and ``BertOutput.forward(hidden_states, input_tensor)`` computes
      ``LayerNorm(dropout(dense(hidden_states)) + input_tensor)`` where ``input_tensor`` is the FFN sub-block's
      input. The wrapper of ``output`` calls it with ``input_tensor + scaling * adapter(input_tensor)``, which is
      exactly ``LayerNorm(FFN(x) + scaling * adapter(x) + x)``: the paper's parallel adapter, without copying
      any of BertOutput's internals.

Deviations from the papers, on purpose or for simplicity:

- Sequential adapters wrap the sub-block's output ``nn.Linear`` (``y = W x; y + up(act(down(y)))``). In
  BERT and T5 the sub-block applies dropout after that Linear, so the adapter runs *before* that dropout,
  whereas Houlsby et al. apply it after; in eval mode the two are identical.
- Houlsby et al. also train the layer-norm parameters; here only the adapters (and ``modules_to_save``) train.
- Pfeiffer et al. (and the adapter-transformers ``PfeifferConfig``) rearrange the residual and the block's
  layer norm around the adapter; here the adapter is the plain ``h + adapter(h)`` on the FFN output.
- For pre-LN models (LLaMA, T5) the parallel adapter reads the *normalised* FFN input (what the FFN module
  receives); He et al. experimented on post-LN models, where the FFN input is not normalised separately.
- ``placement="parallel"`` adapts the feed-forward sub-block only (the variant He et al. recommend; their
  attention-side parallel adapter is not a default). Any module can be targeted explicitly with
  ``target_modules`` as long as its ``forward(x)`` returns a tensor of x's width, or it has BertOutput's
  ``forward(hidden_states, input_tensor)`` signature.
- Houlsby et al. initialise both projections near zero; with ``init_weights=True`` the up projection (weight
  and bias) is exactly zero, so the adapted model starts as the base model, and the down projection keeps
  PyTorch's default ``nn.Linear`` init.

Adapters are non-linear, so they cannot be folded into the base weights: ``merge_and_unload()`` and
``merge_adapter()`` raise. ``unload()`` (drop the adapters) works. Several adapters can live in one model
(``add_adapter`` / ``set_adapter`` / ``load_adapter``), but they must all be sequential (houlsby/pfeiffer) or all
parallel: peft does not descend into an already wrapped module, so mixing the two is refused with a ValueError.

Usage (the method is registered with peft on import)::

    import peftkit.adapters.bottleneck  # noqa: F401  (registers the method)
    from peftkit.adapters.bottleneck import BottleneckConfig
    from peft import get_peft_model, PeftModel

    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS", placement="houlsby"))
    model.save_pretrained("out")
    loaded = PeftModel.from_pretrained(fresh_base, "out")

With ``task_type="SEQ_CLS"`` peft itself adds ``classifier`` and ``score`` to ``modules_to_save``. T5's
``T5ForSequenceClassification`` head is called ``classification_head``, which peft does not know; this config's
default handling adds it (see ``BottleneckModel._prepare_adapter_config``) whenever the task type is SEQ_CLS
and the model has a top-level ``classification_head``, so callers need not pass it.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, TaskType, register_peft_method
from torch import nn

from peftkit.config import AdapterConfig, ConfigError
from peftkit.families import Family

__all__ = ["BottleneckConfig", "BottleneckLayer", "BottleneckModel", "MERGE_ERROR"]

PEFT_METHOD_NAME = "bottleneck"
PREFIX = "bottleneck_"

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
SEQUENTIAL_PLACEMENTS = ("houlsby", "pfeiffer")

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "swish": F.silu,
    "tanh": torch.tanh,
}

MERGE_ERROR = (
    "Bottleneck adapters add non-linear modules (down projection, activation, up projection) to the model; "
    "they cannot be merged into the base weights. Use the model with the adapter attached (or save it with "
    "save_pretrained and load the standalone adapter with PeftModel.from_pretrained), or call unload() to drop "
    "the adapters."
)


def _peft_type_member() -> PeftType:
    """The `PeftType` member for this method, added to peft's enum if it is not there yet.

    Workaround for peft 0.21.x (checked on 0.21.2): `peft.utils.register_peft_method` only accepts names that
    are already members of the closed enum `peft.utils.peft_types.PeftType` ("please add an entry to
    PeftType"), so a method defined outside peft cannot register at all. This is the one place where peft is
    touched: we add a single member, built the way `enum` builds members, so that `PeftType.BOTTLENECK`,
    `PeftType("BOTTLENECK")`, `.value` and the JSON round trip of `peft_type` behave like for any built-in
    method. Everything else goes through peft's public `register_peft_method`.
    """
    name = PEFT_METHOD_NAME.upper()
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    # EnumType.__setattr__ refuses to (re)bind member names; the member is new, so bind it on the class directly
    type.__setattr__(PeftType, name, member)
    return member


BOTTLENECK = _peft_type_member()


# Default targets, per `config.model_type` and placement. A str is a regex (peft full-matches it against the
# module name); a list matches module-name suffixes. BERT-like models need regexes: `output.dense` would also
# match `attention.output.dense`, and `output` would also match `attention.output`.
_BERT_LIKE = {
    "houlsby": r".*\.layer\.\d+\.(attention\.output|output)\.dense",
    "pfeiffer": r".*\.layer\.\d+\.output\.dense",
    "parallel": r".*\.layer\.\d+\.output",
}
_T5_LIKE = {
    # `o` matches SelfAttention.o in encoder and decoder and the decoder's cross-attention EncDecAttention.o
    "houlsby": ["o", "wo"],
    "pfeiffer": ["wo"],
    "parallel": ["DenseReluDense"],
}
_LLAMA_LIKE = {
    "houlsby": ["o_proj", "down_proj"],
    "pfeiffer": ["down_proj"],
    "parallel": ["mlp"],
}
DEFAULT_TARGET_MODULES: dict[str, dict[str, str | list[str]]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": {"houlsby": ["out_lin", "lin2"], "pfeiffer": ["lin2"], "parallel": ["ffn"]},
    "deberta-v2": _BERT_LIKE,
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "phi": {"houlsby": ["dense", "fc2"], "pfeiffer": ["fc2"], "parallel": ["mlp"]},
}


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of bottleneck adapters (Houlsby / Pfeiffer / parallel); see the module docstring.

    Args:
        reduction_factor: bottleneck width = hidden width // reduction_factor (at least 1).
        non_linearity: activation between the projections: "relu", "gelu", "swish" (SiLU) or "tanh".
        placement: "houlsby" (after attention and FFN), "pfeiffer" (after FFN) or "parallel" (FFN, parallel).
        residual: sequential placements only: output is ``h + adapter(h)`` if True, ``adapter(h)`` if False.
        scaling: parallel placement only: the adapter output is multiplied by this before it is added.
        target_modules: module names (suffixes) or a regex; None picks the defaults for ``config.model_type``.
            Sequential placements target the sub-block's output Linear, parallel targets the FFN module.
        exclude_modules: module names (suffixes) or a regex not to adapt.
        modules_to_save: modules trained in full and saved with the adapter (e.g. the classifier head).
        init_weights: zero-initialise the up projection so that the adapter starts as the identity.
    """

    reduction_factor: int = field(
        default=16, metadata={"help": "bottleneck dim = hidden // reduction_factor"}
    )
    non_linearity: str = field(default="relu", metadata={"help": "relu, gelu, swish or tanh"})
    placement: str = field(default="pfeiffer", metadata={"help": "houlsby, pfeiffer or parallel"})
    residual: bool = field(default=True, metadata={"help": "sequential placements: h + adapter(h)"})
    scaling: float = field(default=1.0, metadata={"help": "parallel placement: scale of the adapter output"})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names or regex to adapt; None: defaults for the model type and placement."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or regex not to adapt."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter, e.g. the classifier head."},
    )
    init_weights: bool = field(
        default=True, metadata={"help": "zero up projection: adapter starts as identity"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = BOTTLENECK
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.non_linearity not in _ACTIVATIONS:
            raise ValueError(
                f"non_linearity must be one of {tuple(_ACTIVATIONS)}, got {self.non_linearity!r}"
            )
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int):
            raise ValueError(f"reduction_factor must be an int, got {self.reduction_factor!r}")
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if self.placement in SEQUENTIAL_PLACEMENTS and self.scaling != 1.0:
            warnings.warn(
                f"BottleneckConfig.scaling={self.scaling} is only used by placement='parallel'; "
                f"it is ignored for placement={self.placement!r}.",
                stacklevel=2,
            )
        if self.placement == "parallel" and not self.residual:
            warnings.warn(
                "BottleneckConfig.residual=False only applies to sequential placements; a parallel adapter is "
                "always added to the sub-block output.",
                stacklevel=2,
            )


def _first_linear(module: nn.Module) -> nn.Module | None:
    return next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


def _last_linear(module: nn.Module) -> nn.Module | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D
        return module.nf
    return None


def _reference_device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    """Device and floating dtype for new adapter weights (4-bit packed weights are not floating: use fp32)."""
    device = None
    for param in module.parameters():
        device = device or param.device
        if param.dtype.is_floating_point:
            return param.device, param.dtype
    return device, torch.float32


def _required_positional_params(module: nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps one module of the base model and adds bottleneck adapters to it.

    Three modes, fixed by the first adapter added to the layer:

    - ``"sequential"`` (houlsby, pfeiffer): ``y = base(x); y + up(act(down(y)))`` (``up(act(down(y)))`` if
      ``residual`` is False). Several active adapters are applied one after another.
    - ``"parallel"``: ``base(x) + scaling * up(act(down(x)))`` for a module called as ``module(x)``.
    - ``"parallel_residual"``: for BertOutput-like modules ``forward(hidden_states, input_tensor)`` that add
      ``input_tensor`` (the sub-block input) as the residual: ``base(hidden_states, r + scaling * adapter(r))``.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_non_linearity", "bottleneck_residual", "bottleneck_scaling")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_non_linearity: dict[str, str] = {}
        self.bottleneck_residual: dict[str, bool] = {}
        self.bottleneck_scaling: dict[str, float] = {}
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []
        self.mode, self.hidden_size = self._mode_and_width(base_layer, config.placement)
        if self.mode == "parallel_residual":
            self._residual_arg = _required_positional_params(base_layer)[1]
        out_features = _out_features(base_layer)
        if out_features is not None:
            self.in_features = getattr(base_layer, "in_features", None)
            self.out_features = out_features
        self.update_layer(adapter_name, config)

    @staticmethod
    def _mode_and_width(base_layer: nn.Module, placement: str) -> tuple[str, int]:
        name = type(base_layer).__name__
        if placement in SEQUENTIAL_PLACEMENTS:
            width = _out_features(base_layer)
            if width is None:
                raise ValueError(
                    f"placement={placement!r} puts the adapter on the output of a Linear layer, but the targeted "
                    f"module is a {name}. Target the sub-block's output projection (an nn.Linear) instead."
                )
            return "sequential", width
        required = _required_positional_params(base_layer)
        first, last = _first_linear(base_layer), _last_linear(base_layer)
        if len(required) == 2 and last is not None:
            # BertOutput-like: forward(hidden_states, input_tensor), adds input_tensor as the residual
            return "parallel_residual", last.out_features
        if len(required) == 1 and first is not None and first.in_features == last.out_features:
            return "parallel", first.in_features
        raise ValueError(
            f"placement='parallel' wraps a whole feed-forward sub-block: a module called as module(x) whose output "
            f"has x's width (e.g. LLaMA `mlp`, T5 `DenseReluDense`), or a BertOutput-like module called as "
            f"module(hidden_states, input_tensor). The targeted {name} is neither; for a plain nn.Linear whose "
            f"input is not the sub-block input (e.g. `down_proj`, `wo`), target its parent FFN module instead."
        )

    def update_layer(self, adapter_name: str, config: BottleneckConfig, **kwargs) -> None:
        mode = "sequential" if config.placement in SEQUENTIAL_PLACEMENTS else "parallel"
        if (mode == "sequential") != (self.mode == "sequential"):
            raise ValueError(
                f"Cannot add a {config.placement!r} bottleneck adapter {adapter_name!r} to a module that already "
                f"holds {self.mode} bottleneck adapters {sorted(self.bottleneck_down)}."
            )
        bottleneck = max(1, self.hidden_size // config.reduction_factor)
        device, dtype = _reference_device_dtype(self.get_base_layer())
        if device is not None and device.type == "meta":
            device = None  # offloaded base weights: keep the adapter materialised (init_empty_weights still applies)
        down = nn.Linear(self.hidden_size, bottleneck, device=device, dtype=dtype)
        up = nn.Linear(bottleneck, self.hidden_size, device=device, dtype=dtype)
        if config.init_weights:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_non_linearity[adapter_name] = config.non_linearity
        self.bottleneck_residual[adapter_name] = config.residual
        self.bottleneck_scaling[adapter_name] = config.scaling
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _adapter(self, adapter_name: str, h: torch.Tensor) -> torch.Tensor:
        down = self.bottleneck_down[adapter_name]
        up = self.bottleneck_up[adapter_name]
        act = _ACTIVATIONS[self.bottleneck_non_linearity[adapter_name]]
        return up(act(down(h.to(down.weight.dtype)))).to(h.dtype)

    def _active(self) -> list[str]:
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if name in self.bottleneck_down]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        active = self._active()
        if not active:
            return self.base_layer(x, *args, **kwargs)
        if self.mode == "sequential":
            result = self.base_layer(x, *args, **kwargs)
            for name in active:
                delta = self._adapter(name, result)
                result = result + delta if self.bottleneck_residual[name] else delta
            return result
        if self.mode == "parallel":
            result = self.base_layer(x, *args, **kwargs)
            for name in active:
                result = result + self.bottleneck_scaling[name] * self._adapter(name, x)
            return result
        # parallel_residual: x is the FFN's intermediate activation, the residual is the sub-block input
        if args:
            residual, rest = args[0], args[1:]
        else:
            residual, rest = kwargs.pop(self._residual_arg), ()
        shifted = residual
        for name in active:
            shifted = shifted + self.bottleneck_scaling[name] * self._adapter(name, residual)
        return self.base_layer(x, shifted, *rest, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        # nothing can ever be merged, so there is nothing to unmerge
        return None

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    """peft tuner that inserts `BottleneckLayer`s; created by `get_peft_model` for a `BottleneckConfig`."""

    prefix: str = PREFIX
    tuner_layer_cls = BottleneckLayer
    # consulted by peft only through `_prepare_adapter_config`, which this class overrides per placement
    target_module_mapping = {
        model_type: targets["pfeiffer"] for model_type, targets in DEFAULT_TARGET_MODULES.items()
    }

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        # peft does not descend into modules that are already wrapped, so a sequential adapter added after a
        # parallel one would silently miss e.g. `down_proj` inside a wrapped `mlp` (and the other way round would
        # nest wrappers that unload() cannot undo): one model holds one kind of bottleneck adapter.
        sequential = peft_config.placement in SEQUENTIAL_PLACEMENTS
        existing = {
            layer.mode
            for layer in self.model.modules()
            if isinstance(layer, BottleneckLayer) and layer.bottleneck_down
        }
        if existing and (existing == {"sequential"}) != sequential:
            raise ValueError(
                f"This model already holds {'/'.join(sorted(existing))} bottleneck adapters; a "
                f"placement={peft_config.placement!r} adapter cannot be added next to them (sequential and parallel "
                "bottleneck adapters cannot be mixed in one model)."
            )
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            defaults = DEFAULT_TARGET_MODULES.get(model_type)
            if defaults is None:
                raise ValueError(self._unknown_model_message(model_type, peft_config))
            targets = defaults[peft_config.placement]
            peft_config.target_modules = targets if isinstance(targets, str) else list(targets)
        # T5ForSequenceClassification's head is `classification_head`, which peft's SEQ_CLS handling (it adds
        # `classifier` and `score`) does not know about: train and save it too. This runs inside
        # PeftModelForSequenceClassification.__init__, before peft wraps the modules_to_save.
        if peft_config.task_type == TaskType.SEQ_CLS and isinstance(
            getattr(self.model, "classification_head", None), nn.Module
        ):
            if peft_config.modules_to_save is None:
                peft_config.modules_to_save = []
            if "classification_head" not in peft_config.modules_to_save:
                peft_config.modules_to_save.append("classification_head")
        return peft_config

    def _unknown_model_message(self, model_type: str | None, peft_config: BottleneckConfig) -> str:
        skip = set(peft_config.modules_to_save or ())
        candidates = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in self.model.named_modules()
                if isinstance(module, nn.Linear) and not skip.intersection(name.split("."))
            }
        )
        hint = (
            "the feed-forward sub-block modules (e.g. LLaMA `mlp`, T5 `DenseReluDense`)"
            if peft_config.placement == "parallel"
            else "the output projections of the attention and feed-forward sub-blocks"
        )
        return (
            f"BottleneckConfig has no default target_modules for model_type {model_type!r} (known: "
            f"{sorted(DEFAULT_TARGET_MODULES)}). Pass target_modules explicitly, naming {hint}. "
            f"Linear layers in this model: {candidates}"
        )

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        try:
            new_module = BottleneckLayer(target, adapter_name, peft_config)
        except ValueError as err:
            raise ValueError(f"{current_key}: {err}") from err
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # Like peft's LoraModel._replace_module (peft 0.21). BaseTuner's version also re-binds
        # `new_module.weight = child.weight`, which fails for modules without a weight: the FFN modules wrapped by
        # the parallel placement (LlamaMLP, T5DenseActDense, BertOutput), and T5's `classification_head` when
        # unload() puts a modules_to_save module back. The adapter weights are already created on the base
        # layer's device and dtype (see BottleneckLayer.update_layer), so there is nothing else to do.
        setattr(parent, child_name, new_module)

    # -- merging: impossible for non-linear adapters -------------------------------------------------------

    def _check_merge_allowed(self):
        raise NotImplementedError(MERGE_ERROR)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        raise NotImplementedError(MERGE_ERROR)

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("Bottleneck adapters cannot be combined into a weighted adapter.")


def _register() -> None:
    """Register the method with peft; importing this module again (e.g. importlib.reload) re-registers it."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    existing = PEFT_TYPE_TO_CONFIG_MAPPING.get(BOTTLENECK)
    if existing is BottleneckConfig:
        return
    if existing is not None:
        if existing.__qualname__ != BottleneckConfig.__qualname__:
            raise KeyError(
                f"peft already has a method {PEFT_METHOD_NAME!r} registered by {existing.__module__}"
            )
        # an earlier import of this module (reload, or the same file under another module name): replace it
        for mapping in (
            PEFT_TYPE_TO_CONFIG_MAPPING,
            PEFT_TYPE_TO_TUNER_MAPPING,
            PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        ):
            mapping.pop(BOTTLENECK, None)
        PEFT_TYPE_TO_PREFIX_MAPPING.pop(BOTTLENECK, None)
    register_peft_method(
        name=PEFT_METHOD_NAME, config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix=PREFIX
    )


_register()


def build_bottleneck_config(config: AdapterConfig, model: nn.Module, family: Family) -> BottleneckConfig:
    """peftkit's `adapter` recipe section -> BottleneckConfig (targets chosen per family and placement)."""
    from peftkit.adapters.targets import head_modules

    targets = None if config.target_modules == "auto" else config.target_modules
    if targets == "all-linear":
        raise ConfigError(
            "adapter.target_modules: 'all-linear' does not apply to bottleneck adapters; use 'auto'"
        )
    return BottleneckConfig(
        task_type="SEQ_CLS",
        reduction_factor=config.reduction_factor,
        non_linearity=config.non_linearity,
        placement=config.placement,
        scaling=config.scaling,
        target_modules=targets,
        modules_to_save=head_modules(model, family, config.modules_to_save),
    )
