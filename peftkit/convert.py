"""Convert a GGUF checkpoint (llama.cpp's format) into a transformers safetensors folder, once.

transformers reads GGUF files itself (`from_pretrained(folder, gguf_file=name)`, with the
`gguf` package), dequantizing every tensor to float32 on each load, which is slow. The
converted folder (config, float32 safetensors weights, tokenizer) loads like any checkpoint,
so a GGUF model is converted once and cached; the write is atomic (`io.atomic_dir`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from peftkit.config import ConfigError
from peftkit.io import atomic_dir

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where converted bundled models live: `$PEFTKIT_CACHE` or `~/.cache/peftkit`."""
    return Path(os.environ.get("PEFTKIT_CACHE") or Path.home() / ".cache" / "peftkit")


def is_converted(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the model and tokenizer in `gguf_path` as a transformers folder `out_dir` (float32 safetensors)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ConfigError(f"GGUF file {str(gguf_path)!r} not found")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ConfigError("reading GGUF files needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    _drop_gguf_quantizer(model)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def converted_gguf(gguf_path: str | Path, name: str) -> Path:
    """The cached conversion of `gguf_path` under `cache_root() / name`, converting it on first use."""
    out_dir = cache_root() / name
    if not is_converted(out_dir):
        logger.info("converting %s to %s (once; later runs load the cached folder)", gguf_path, out_dir)
        convert_gguf(gguf_path, out_dir)
    return out_dir


def _drop_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model a plain float model that `save_pretrained` writes.

    transformers 5.24 dequantizes the GGUF blocks at load when no GGUF matmul kernel is installed
    (the `kernels` package) or the architecture has no packed path, but keeps its GGUF quantizer on
    the model, and that quantizer refuses to serialize. With a kernel the blocks stay packed
    (integer tensors): those are dequantized first.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if any(not p.is_floating_point() for p in model.parameters()):
        model.dequantize(dtype=torch.float32)
    else:
        quantizer.remove_quantization_config(model)
