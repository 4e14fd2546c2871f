"""Typed run configuration: the single source of truth for every recipe field.

A recipe is YAML whose sections map onto the dataclasses below; `--set a.b=c`
overrides a field after the YAML is read. `validate` checks the whole config in
one place, before any model or data is loaded, and raises `ConfigError` with
the bad key, its value and what to do.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot run; the message says which key and how to fix it."""


@dataclass
class ModelConfig:
    name_or_path: str = "bundled:all-MiniLM-L6-v2"
    """Hub id, local folder, or `bundled:NAME` for a model that ships in a Python package."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weights dtype. Trainable parameters are always kept in float32."""
    trust_remote_code: bool = False
    """Run model code from the Hub. Off unless the recipe asks; never switched on by a file."""
    pad_token: Literal["eos", "unk", "add"] = "eos"
    """Pad policy for tokenizers without a pad token (LLaMA-class): reuse EOS, reuse UNK, or add `<pad>`."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the base model's linear layers quantized by bitsandbytes (`pip install 'peftkit[qlora]'`): 4-bit
    (QLoRA, Dettmers et al. 2023) or 8-bit (LLM.int8). `adapter.method: qlora` with `none` loads in 4 bit. The
    classification head stays unquantized and trainable. LoRA methods only."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: NormalFloat4 (the QLoRA paper's choice for normally distributed weights) or FP4."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the 4-bit quantization constants too (QLoRA's double quantization, ~0.4 bit per weight less)."""
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """dtype the 4-bit weights are dequantized to for each matmul. bfloat16 works on CPUs too (fast with
    AVX512-BF16/AMX); use float32 on CPUs without bf16 support."""
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"
    """`adapter.method: features`: how a text's token states become one vector: first token (`cls`), masked
    mean (`mean`), last non-pad token (`last`); `auto`: mean for encoders and T5/BART, last for decoders."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel: `auto` (transformers' choice: PyTorch SDPA where the model supports it), `sdpa`,
    `eager` (plain matmuls; for debugging), `flash_attention_2` (CUDA and the flash-attn package)."""


@dataclass
class AdapterConfig:
    method: str = "lora"
    """Adaptation method: a peft adapter (`peftkit.adapters.METHODS`), `full` (full fine-tuning: every weight
    trains; saved as a plain transformers model) or `features` (frozen backbone, a new linear head trained on
    cached pooled features; see `model.pooling`, `training.feature_cache`)."""
    r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = lora_alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "auto"
    """`auto` (attention + MLP linears of the family), `all-linear`, or a list of module names."""
    modules_to_save: list[str] | None = None
    """Extra modules trained in full and saved with the adapter. The classifier head is always added."""
    reduction_factor: int = 16
    """Bottleneck adapters: bottleneck width = hidden size // reduction_factor."""
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    """Bottleneck adapters: activation between the down and up projections."""
    placement: Literal["houlsby", "pfeiffer", "parallel"] = "pfeiffer"
    """Bottleneck adapters: after attention and FFN (Houlsby), after FFN (Pfeiffer), or parallel to the FFN (He)."""
    scaling: float = 1.0
    """Bottleneck adapters, parallel placement: scale of the adapter output."""
    use_dora: bool = False
    """LoRA methods: DoRA (Liu et al. 2024): LoRA on the direction of each weight plus a trained magnitude."""
    use_rslora: bool = False
    """LoRA methods: rank-stabilised scale lora_alpha / sqrt(r) (Kalajdzievski 2023) instead of lora_alpha / r."""
    init_lora_weights: Literal[True, False, "gaussian", "orthogonal"] = True
    """LoRA methods: `true` (A Kaiming-uniform, B zero: the paper's), `gaussian` (A Gaussian, B zero),
    `orthogonal` (orthogonal A and B, starting as the base model), `false` (random A and B: not a no-op; for
    debugging). Inits that rewrite the base weights (PiSSA, OLoRA) are not offered: the saved adapter would
    not fit the original base."""
    layers_to_transform: list[int] | None = None
    """LoRA methods: adapt only these block indexes (0-based; for T5, the same index in encoder and decoder)."""
    loraplus_lr_ratio: float | None = None
    """LoRA methods: LoRA+ (Hayou et al. 2024): the B matrices learn at learning_rate x this ratio (paper: 16)."""
    num_virtual_tokens: int = 20
    """Prefix and prompt tuning: number of virtual tokens (prefix key/values per layer, or input embeddings)."""
    prefix_projection: bool = False
    """Prefix tuning: reparametrise the prefix through a two-layer MLP (Li & Liang 2021). Off: the prefix
    key/values are trained directly (P-tuning v2, Liu et al. 2022)."""


@dataclass
class TaskConfig:
    """One task of a multi-task run (`data.tasks`): its own files, columns and labels, and its own head."""

    name: str = ""
    """Short unique name: the key of the task's head and of its metrics (`NAME/accuracy`)."""
    train_file: str = ""
    validation_file: str | None = None
    """When empty, `data.validation_ratio` of the task's training data is carved off with `training.seed`."""
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None


@dataclass
class DataConfig:
    train_file: str | None = None
    """Local CSV/TSV/JSON/JSONL/Parquet file, or `bundled:NAME/FILE` for data shipped in `peftkit/bundled`."""
    validation_file: str | None = None
    """Held-out file. When empty, `validation_ratio` of the training data is carved off with `seed`."""
    test_file: str | None = None
    """Optional test file, evaluated once at the end."""
    dataset: str | None = None
    """Hub dataset id, used instead of files (splits `train_split`, `validation_split`)."""
    dataset_config: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    text_column: str = "text"
    text_pair_column: str | None = None
    """Second text column for sentence-pair tasks (NLI, paraphrase)."""
    label_column: str = "label"
    label_names: list[str] | None = None
    """Names for integer labels 0..n-1, in order. String labels name themselves."""
    validation_ratio: float = 0.1
    max_length: int = 128
    """Truncate inputs to this many tokens; batches are padded only to their longest input."""
    max_train_samples: int | None = None
    """Use only the first N training rows after a seeded shuffle (quick experiments)."""
    csv_quoting: Literal["auto", "minimal", "none"] = "auto"
    """CSV quoting; `auto` is `none` for .tsv (GLUE style) and `minimal` for .csv."""
    k_shot: int | None = None
    """Few-shot: train on exactly k examples per class, drawn with `training.seed` (after the validation carve)."""
    augment: Literal["none", "delete", "swap", "delete+swap"] = "none"
    """Add `augment_copies` augmented copies of the training texts (seeded): random word deletion (each word
    with probability `augment_prob`) and/or random swaps (round(augment_prob x words) swaps)."""
    augment_prob: float = 0.1
    """Augmentation strength (the EDA paper's alpha; 0.1 suits short texts)."""
    augment_copies: int = 1
    """Augmented copies added per training example."""
    source_file: str | None = None
    """Source-task data (same columns; labels within the target's label set) for `training.ewc_lambda` (its
    Fisher information) and `replay_ratio`."""
    replay_ratio: float = 0.0
    """Replay: this fraction of every training batch is drawn from `source_file` (0: off)."""
    target_column: str | None = None
    """`task: seq2seq`: the output text column (the input is `text_column`). Null: classification as
    generation, the model learns to write the word of `label_column`'s class (see `label_words`)."""
    label_words: list[str] | None = None
    """`task: seq2seq` without `target_column`: the word generated for each class, in label order (sorted label
    values, or `label_names`). Null: the label names themselves."""
    max_target_length: int = 64
    """`task: seq2seq`: truncate target texts to this many tokens."""
    prompt_column: str = "prompt"
    """`task: causal-lm`: the instruction column (one user turn)."""
    response_column: str = "response"
    """`task: causal-lm`: the answer column (one assistant turn); the loss is on its tokens only."""
    messages_column: str | None = None
    """`task: causal-lm`: a column of chat messages (`[{role, content}, ...]`, JSON/JSONL data) used instead of
    prompt/response; the loss is on every assistant turn."""
    chat_template: str = "auto"
    """`task: causal-lm`: `auto` (the tokenizer's chat template, else `plain`) or a name in
    `peftkit.templates.TEMPLATES` (used even when the tokenizer has its own)."""
    packing: bool = False
    """`task: causal-lm`: train on each batch packed into one row, position ids restarting per example, so no
    padding is computed and examples do not attend to each other (same loss as unpacked)."""
    tasks: list[TaskConfig] | None = None
    """Multi-task transfer (`strategies/multitask.py`): one backbone and adapter, one head per task, batches
    drawn task by task as `training.task_sampling` says. Replaces `train_file` and the column settings."""


@dataclass
class TrainingConfig:
    output_dir: str = "runs/peftkit"
    num_epochs: float = 3.0
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides num_epochs when > 0)."""
    batch_size: int = 32
    """Per-device training batch size."""
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    """Peak learning rate; LoRA wants ~10x the full fine-tuning rate."""
    weight_decay: float = 0.01
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto`: bf16 on GPUs that support it, fp32 elsewhere."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding), shuffled between groups."""
    eval_every_steps: int = 0
    """Evaluate every N optimizer steps (0: at the end of each epoch)."""
    log_every_steps: int = 10
    seed: int = 42
    progress_bar: bool = True
    save_every_steps: int = 0
    """Write a checkpoint to `output_dir/checkpoints/step-N` every N optimizer steps (0: off). A SIGTERM/SIGINT
    always writes one before the run stops."""
    save_total_limit: int = 2
    """Checkpoints kept: the newest N, plus the best by `metric_for_best` when evaluations exist."""
    resume: str | None = None
    """`auto` (the newest committed checkpoint in `output_dir/checkpoints`, or a fresh start when there is none),
    a checkpoint folder, or null (start fresh). Refused when the base model, adapter, data, world size or
    batch size differ from the checkpoint's run."""
    max_bad_steps: int = 3
    """Optimizer steps in a row with a NaN/inf loss or gradient norm before training stops with an error
    (each such step is skipped, so the weights and checkpoints stay finite). 0: no check (no per-step sync)."""
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    """Validation metric that picks the best checkpoint kept by rotation (`loss`: lower is better)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    layerwise_lr_decay: float | None = None
    """Discriminative learning rates: layer group at depth d (0 = head, then blocks top-down, embeddings last)
    learns at learning_rate x decay^d. Typical 0.8-0.95; null: one rate for all."""
    gradual_unfreezing: bool = False
    """ULMFiT gradual unfreezing: start with the head (and, with an adapter, the top block's adapter) trainable
    and unfreeze one more layer group, top-down, every `unfreeze_every_steps`."""
    unfreeze_every_steps: int = 0
    """Optimizer steps between two unfreezings (0: one layer group per epoch)."""
    ewc_lambda: float = 0.0
    """EWC (Kirkpatrick et al. 2017): adds lambda/2 x sum F (w - w*)^2, F the diagonal Fisher on
    `data.source_file` at the starting weights (0: off). Head excluded."""
    ewc_fisher_batches: int = 16
    """Source-task batches (of `batch_size`) that estimate EWC's Fisher information."""
    l2sp_lambda: float = 0.0
    """L2-SP (Li et al. 2018): adds lambda/2 x ||w - w0||^2 towards the starting weights (0: off). Head excluded.
    AdamW rescales the penalty's gradient like the task's, so start small (1e-4 to 1e-2), not the paper's SGD 0.1."""
    max_new_tokens: int = 32
    """`task: seq2seq` / `causal-lm`: tokens generated per example when evaluating by generation (greedy)."""
    task_sampling: Literal["proportional", "temperature", "uniform"] = "proportional"
    """Multi-task runs: the task of each batch is drawn with p_i proportional to n_i (its training rows),
    to n_i^(1/task_temperature), or uniformly."""
    task_temperature: float = 2.0
    """`task_sampling: temperature`: T > 1 flattens the task mix towards uniform (T=1: proportional)."""
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """`adamw`: torch AdamW (fused on a GPU). `adamw_8bit`: bitsandbytes AdamW with 8-bit states (~75% less
    optimizer memory; CPU and GPU). `paged_adamw_8bit`: also paged to host memory under GPU pressure (GPU only)."""
    compile: bool = False
    """`torch.compile` the model's forward: faster steps after a compilation per new batch shape (minutes on a
    CPU for a large model; needs a C++ compiler on a CPU). Off by default."""
    feature_cache: Literal["disk", "memory"] = "disk"
    """`adapter.method: features`: keep the features in memory only, or also in `output_dir/features/`
    (safetensors, keyed by a fingerprint of model, data, pooling and max_length; reused by later runs)."""


@dataclass
class ExportConfig:
    save_adapter: bool = True
    """Write the standalone adapter (weights, config, head, tokenizer, label map) to `output_dir/adapter`."""


@dataclass
class DomainConfig:
    """Domain adaptation (`peftkit.domain`): adapt a model trained on the labelled source data (`data.*`) to a
    target domain known from unlabelled text (and, for `intermediate`, a labelled related task first)."""

    method: Literal["none", "dapt", "intermediate", "self_training", "dann", "coral", "mmd"] = "none"
    """`dapt`: continued pre-training on `target_file` through a LoRA adapter (masked LM / span corruption /
    causal LM by family), merged into the base before task training (Gururangan et al. 2020).
    `intermediate`: train on `intermediate_file` (a related labelled task) first, merge, then on `data.*`.
    `self_training`: pseudo-label `target_file` above `threshold` and retrain on source plus pseudo-labels.
    `dann`: a domain classifier behind a gradient-reversal layer (Ganin and Lempitsky 2015).
    `coral` / `mmd`: a CORAL (Sun and Saenko 2016) / Gaussian-kernel MMD penalty between source and target
    pooled features. `none`: off."""
    target_file: str | None = None
    """Unlabelled target-domain text (any data format); labels in it, if any, are never read."""
    target_text_column: str | None = None
    """Text column of `target_file` (null: `data.text_column`)."""
    weight: float = 1.0
    """`dann`: the largest gradient-reversal weight (lambda_p = weight x (2/(1+exp(-10 p)) - 1)); `coral`/`mmd`:
    the penalty's weight."""
    threshold: float = 0.9
    """`self_training`: keep target texts whose top predicted probability is at least this."""
    class_balanced: bool = False
    """`self_training`: keep the same number of pseudo-labels per class (the most confident of each)."""
    rounds: int = 1
    """`self_training`: pseudo-label and retrain this many times (each round relabels with the newest model)."""
    pretrain_steps: int = 200
    """`dapt`: optimizer steps of continued pre-training."""
    pretrain_learning_rate: float = 5.0e-4
    """`dapt`: learning rate of the continued pre-training adapter."""
    mlm_probability: float = 0.15
    """`dapt`: share of tokens masked (BERT-class) or corrupted in spans (T5-class); unused for causal LMs."""
    dapt_mode: Literal["merge", "stack"] = "merge"
    """`dapt`: what task training starts from. `merge`: the domain adapter merged into the base weights.
    `stack` (MAD-X's Stack; Pfeiffer et al. 2020): the domain adapter kept separate and frozen, the task
    LoRA adapter trained on top of it, both active in every forward pass and saved together (the domain
    adapter in the run's `adapter/domain/`); needs a LoRA task adapter (`adapter.method: lora`, DoRA
    and rsLoRA included; DoRA normalises its own update on the base weight, without the domain update) or
    `qlora` (the domain adapter, pre-trained on the unquantized language model, on the 4-bit base); not 8-bit."""
    stack_adapter: str | None = None
    """A domain LoRA adapter folder (a `dapt` run's `dapt/adapter/`) loaded frozen under the task adapter;
    `dapt_mode: stack` sets it for its task stage (null: none)."""
    intermediate_file: str | None = None
    """`intermediate`: the related labelled task trained on first (same text column; its own labels)."""
    intermediate_epochs: float = 1.0
    """`intermediate`: epochs on `intermediate_file`."""
    intermediate_max_samples: int | None = None
    """`intermediate`: use only the first N rows of `intermediate_file` after a seeded shuffle (null: all)."""


@dataclass
class RunConfig:
    task: Literal["classification", "seq2seq", "causal-lm"] = "classification"
    """`classification` (a classifier head), `seq2seq` (T5/BART-class, text in -> text out) or `causal-lm`
    (LLaMA-class instruction/chat tuning); the generative tasks are evaluated by generation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Coerce `value` to `annotation` where lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}")
    if origin is Literal:
        if value is False and "no" in args:
            value = "no"  # YAML 1.1 reads an unquoted `no` (mixed_precision: no) as false
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(annotation):  # a list of sections (data.tasks)
        return value if isinstance(value, annotation) else _build(annotation, value, f"{key}.")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} is not a list")
        return [_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null")
        return None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _looks_like_float(value):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not an int")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}")
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'; {prefix.rstrip('.') or 'recipe'} accepts: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, values, "")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 1e-4), values parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in {"nan", "inf", "-inf", "infinity"}


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return values


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply `--set` overrides, build and validate the typed config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
    config = config_from_dict(apply_overrides(values, overrides or []))
    validate(config)
    return config


# ---------------------------------------------------------------- validation


def validate(config: RunConfig) -> RunConfig:
    """Check values and combinations before anything expensive happens."""
    from peftkit.adapters import METHODS, check_method_compatible
    from peftkit.domain import check_domain
    from peftkit.fastpaths import check_fast_paths
    from peftkit.strategies import BACKBONE_METHODS, check_strategies

    m, a, d, t = config.model, config.adapter, config.data, config.training
    if not m.name_or_path:
        raise ConfigError("model.name_or_path is empty; give a Hub id, a local folder or bundled:NAME")
    if m.name_or_path.startswith("bundled:"):
        from peftkit.model import BUNDLED_MODELS

        name = m.name_or_path.removeprefix("bundled:")
        if name not in BUNDLED_MODELS:  # a missing package is reported when the model loads, before weights
            raise ConfigError(
                f"model.name_or_path: unknown bundled model {name!r}; choices: {', '.join(BUNDLED_MODELS)}"
            )
    if a.method not in METHODS and a.method not in BACKBONE_METHODS:
        choices = ", ".join(sorted([*METHODS, *BACKBONE_METHODS]))
        raise ConfigError(f"adapter.method: {a.method!r} is not one of {choices}")
    _positive(a.r, "adapter.r")
    _positive(a.reduction_factor, "adapter.reduction_factor")
    if not 0.0 <= a.lora_dropout < 1.0:
        raise ConfigError(f"adapter.lora_dropout: {a.lora_dropout} must be in [0, 1)")
    if isinstance(a.target_modules, str) and a.target_modules not in ("auto", "all-linear"):
        raise ConfigError(
            f"adapter.target_modules: {a.target_modules!r} must be 'auto', 'all-linear' or a list of names"
        )
    if isinstance(a.target_modules, list) and not a.target_modules:
        raise ConfigError("adapter.target_modules: empty list; use 'auto' or name the modules")
    check_method_compatible(config)  # method options, quantization, and combinations peft cannot run
    check_strategies(config)  # transfer-learning options (peftkit.strategies)
    from peftkit.generative import check_task

    check_task(config)  # fields of the generative tasks (seq2seq, causal-lm), refused elsewhere
    if d.tasks and config.task != "classification":
        raise ConfigError(f"data.tasks: multi-task heads are for task: classification, not {config.task!r}")
    check_domain(config)  # domain-adaptation options (peftkit.domain)
    if config.domain.method != "none" and (config.task != "classification" or d.tasks):
        raise ConfigError(
            f"domain.method: {config.domain.method!r} adapts a single-task classifier; it cannot be combined with "
            "data.tasks or a generative task"
        )
    check_fast_paths(config)  # optimizer, compile, attention kernel (peftkit.fastpaths)
    if not d.train_file and not d.dataset and not d.tasks:
        raise ConfigError("data: set data.train_file (a local file) or data.dataset (a Hub dataset id)")
    if d.train_file and d.dataset:
        raise ConfigError("data: set only one of data.train_file and data.dataset")
    if not 0.0 < d.validation_ratio < 1.0:
        raise ConfigError(f"data.validation_ratio: {d.validation_ratio} must be between 0 and 1")
    _positive(d.max_length, "data.max_length")
    if d.max_train_samples is not None:
        _positive(d.max_train_samples, "data.max_train_samples")
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every_steps"):
        _positive(getattr(t, name), f"training.{name}")
    if t.num_epochs <= 0 and t.max_steps <= 0:
        raise ConfigError("training: set num_epochs > 0 or max_steps > 0")
    if t.learning_rate <= 0:
        raise ConfigError(f"training.learning_rate: {t.learning_rate} must be > 0")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"training.warmup_ratio: {t.warmup_ratio} must be in [0, 1)")
    if t.eval_every_steps < 0:
        raise ConfigError("training.eval_every_steps must be >= 0 (0 evaluates at each epoch end)")
    if t.save_every_steps < 0:
        raise ConfigError("training.save_every_steps must be >= 0 (0 turns periodic checkpoints off)")
    _positive(t.save_total_limit, "training.save_total_limit")
    if t.max_bad_steps < 0:
        raise ConfigError(f"training.max_bad_steps: {t.max_bad_steps} must be >= 0 (0 turns the check off)")
    if t.resume == "":
        raise ConfigError("training.resume is empty; use auto, a checkpoint folder, or null")
    return config


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: {value} must be > 0")
