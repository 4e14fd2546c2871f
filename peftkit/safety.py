"""Safe loading of files that may come from someone else: never unpickle, never run their code.

- Weights load from safetensors only. A `.bin`/`.pt`/`.pth`/`.ckpt` file is refused, never opened:
  unpickling such a file can run any code it carries. Convert a file you trust explicitly.
- A safetensors header is read and checked (its 8-byte length capped, its JSON and offsets
  checked against the file size) before safetensors maps the file, so a malformed or oversized
  header is a clean `UnsafeFileError` naming the file, not a crash or a huge allocation.
- `adapter_config.json` keys that make peft import code (`auto_mapping` naming a module outside
  transformers/peft), `trust_remote_code`, and a `peft_type` peft does not register are refused.
  `trust_remote_code` is only ever switched on by the recipe (`model.trust_remote_code`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from peftkit.config import ConfigError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 64 * 1024 * 1024
"""A safetensors header larger than this is refused (real ones are KBs to a few MBs; safetensors caps 100 MB)."""
REMOTE_CODE_KEYS = ("trust_remote_code", "auto_map")
_SAFE_LIBRARIES = ("transformers", "peft")
CONVERT_HINT = (
    'convert a file you trust explicitly, e.g. python -c "import torch; from safetensors.torch import '
    "save_file; save_file(torch.load('FILE.bin', weights_only=True), 'FILE.safetensors')\""
)


class UnsafeFileError(ConfigError):
    """A file peftkit refuses to load: pickled, malformed, or asking to run code. Nothing was loaded."""


def pickled_files(folder: Path) -> list[str]:
    """Names of the pickle-format weight files at the top of `folder`."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def refuse_pickled_weights(folder: str | Path) -> None:
    """Refuse a local model folder whose weights exist only in pickle format (nothing is opened)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = pickled_files(folder)
    if pickled:
        raise UnsafeFileError(
            f"{str(folder)!r} has weights only as pickle files {pickled}: peftkit never unpickles (it can run "
            f"code hidden in the file). {CONVERT_HINT}"
        )


def check_safetensors(path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES) -> dict:
    """The parsed header of the safetensors file `path`, or UnsafeFileError saying what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise UnsafeFileError(f"{path.name}: {size} bytes is too short for a safetensors file")
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > max_header_bytes or length > size - 8:
            raise UnsafeFileError(
                f"{path.name}: safetensors header claims {length:,} bytes (file {size:,} bytes, limit "
                f"{max_header_bytes:,}): corrupt or crafted; not loaded"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFileError(
            f"{path.name}: safetensors header is not valid JSON ({err}); not loaded"
        ) from None
    if not isinstance(header, dict):
        raise UnsafeFileError(f"{path.name}: safetensors header is a {type(header).__name__}, not a mapping")
    _check_offsets(path.name, header, size - 8 - length)
    return header


def _check_offsets(name: str, header: dict, data_bytes: int) -> None:
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise UnsafeFileError(
                f"{name}: tensor {key!r} has data_offsets {offsets!r} outside the {data_bytes:,} data bytes; "
                "corrupt or crafted; not loaded"
            )


def check_adapter_config(folder: str | Path) -> dict:
    """The adapter's `adapter_config.json`, refused if it would make peft import or run code."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    path = Path(folder) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFileError(f"{str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UnsafeFileError(f"{str(path)!r} holds a {type(config).__name__}, not a mapping")
    for key in REMOTE_CODE_KEYS:
        if config.get(key):
            raise UnsafeFileError(
                f"{str(path)!r} sets {key}={config[key]!r}: a file never switches remote code on; "
                f"remove the key (or set model.trust_remote_code in your own recipe)"
            )
    library = (config.get("auto_mapping") or {}).get("parent_library")
    if library is not None and str(library).split(".")[0] not in _SAFE_LIBRARIES:
        raise UnsafeFileError(
            f"{str(path)!r} auto_mapping.parent_library={library!r} would import a module outside "
            f"{', '.join(_SAFE_LIBRARIES)}; refused"
        )
    if config.get("peft_type") not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise UnsafeFileError(
            f"{str(path)!r} peft_type={config.get('peft_type')!r} is not a registered peft method; "
            f"known: {', '.join(sorted(getattr(t, 'value', t) for t in PEFT_TYPE_TO_CONFIG_MAPPING))}"
        )
    return config
