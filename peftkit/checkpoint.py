"""Training checkpoints that survive crashes and pre-emption: safetensors and JSON, never pickle.

`output_dir/checkpoints/step-N/` holds

    trainable.safetensors           trainable parameters (adapter + head), by their unwrapped names
    optimizer.safetensors, .json    optimizer state: its tensors / everything else (param groups, ...)
    scheduler.json                  learning-rate schedule state
    scaler.json                     fp16 loss-scaler state (fp16 runs only)
    rng_state.safetensors, .json    torch CPU (+ CUDA) / Python and NumPy generator states, per process
    trainer_state.json              step, data position, loss and evaluation history, run fingerprint
    COMMITTED                       written last

It is written as `.tmp-step-N`, marked COMMITTED, then renamed (`io.committed_dir`); resume trusts
only committed folders, and rotation deletes old ones only after the new one is committed. All
processes call `save` and `restore`; only the main process writes. A run may resume only from a
checkpoint with the same fingerprint: base model (and how it is loaded), adapter, data files and
sizes, seed, world size and batch size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_file, save_file

from peftkit import __version__
from peftkit.config import ConfigError, RunConfig
from peftkit.data import resolve_data_path
from peftkit.io import committed_dir, write_json
from peftkit.safety import check_safetensors

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MARKER = "COMMITTED"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# FSDP and DeepSpeed shard the optimizer state across processes; this writer saves one process's view.
_SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


@dataclass
class Position:
    """Where training stands: `batch` batches of `epoch` consumed (per process), `step` optimizer steps done.

    `micro_step` is accelerate's gradient-accumulation counter (`Accelerator.step`) at that point.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    micro_step: int = 0


# ---------------------------------------------------------------- finding checkpoints


def step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def committed(folder: Path) -> list[Path]:
    """Committed checkpoints in `folder`, oldest first; `.tmp-` and unmarked folders are skipped."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=step_of)


def find_resume(resume: str | None, folder: Path) -> Path | None:
    """The checkpoint `training.resume` names: the newest committed one for `auto`, else the given folder."""
    if resume is None:
        return None
    if resume == "auto":
        found = committed(folder)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / MARKER).is_file():
        raise ConfigError(
            f"training.resume: {str(path)!r} is not a committed checkpoint (no {MARKER} file); "
            f"give a {CHECKPOINTS_DIR}/step-N folder, or auto for the newest one"
        )
    return path


# ---------------------------------------------------------------- fingerprint


def fingerprint(config: RunConfig, world_size: int) -> dict:
    """What a checkpoint's run must share with a run that resumes from it."""
    d, t = config.data, config.training
    files = {name: _file_id(getattr(d, name)) for name in ("train_file", "validation_file", "test_file")}
    return {
        "base_model": dataclasses.asdict(config.model),  # how the frozen weights load, not only their name
        "adapter": dataclasses.asdict(config.adapter),
        "data": files | {"dataset": d.dataset, "dataset_config": d.dataset_config},
        "data_order": {"seed": t.seed, "max_train_samples": d.max_train_samples},
        "world_size": world_size,
        "batch_size": {
            "per_device": t.batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
        },
    }


def _file_id(path: str | None) -> dict | None:
    if not path:
        return None
    file = resolve_data_path(path)
    return {"path": path, "bytes": file.stat().st_size if file.is_file() else None}


def check_fingerprint(path: Path, current: dict) -> None:
    """Raise ConfigError naming every field where the checkpoint's run and this one differ."""
    saved = json.loads((path / "trainer_state.json").read_text())["fingerprint"]
    old, new = _flatten(saved), _flatten(json.loads(json.dumps(current)))
    changed = [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]
    if changed:
        raise ConfigError(
            f"training.resume: checkpoint {str(path)!r} was written by a different run; changed since: "
            + "; ".join(changed)
            + ". Resume with the same settings, or start fresh (training.resume=null or a new output_dir)"
        )


_ABSENT = object()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---------------------------------------------------------------- state <-> safetensors + JSON


def dump_state(state: Any, folder: Path, name: str) -> None:
    """Write `state` (a state_dict: nested dicts, lists, tuples, numbers, tensors) as `name`.json + .safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    write_json(folder / f"{name}.json", {"state": _encode(state, name, tensors)})
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")


def load_state(folder: Path, name: str) -> Any:
    tensor_file = folder / f"{name}.safetensors"
    tensors = {}
    if tensor_file.is_file():
        check_safetensors(tensor_file)
        tensors = load_file(tensor_file)
    return _decode(json.loads((folder / f"{name}.json").read_text())["state"], tensors)


def _encode(obj: Any, path: str, tensors: dict) -> Any:
    """JSON-able copy of `obj`: tensors moved into `tensors` under their path, tuples and non-string keys marked."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, tuple | list):
        items = [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict) and all(isinstance(k, str) and not k.startswith("__") for k in obj):
        return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, dict):  # optimizer state is keyed by parameter index
        return {"__items__": [[k, _encode(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{path}: cannot store a {type(obj).__name__} without pickle")


def _decode(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    items = obj["__items__"] if "__items__" in obj else obj.items()
    return {k: _decode(v, tensors) for k, v in items}


def rng_state() -> dict:
    """This process's random generator states: Python, NumPy, torch CPU and (when used) CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params.keys() != tensors.keys():
        missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
        raise ConfigError(
            f"checkpoint {str(path)!r} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


# ---------------------------------------------------------------- rotation


def rotate(folder: Path, keep_last: int, metric: str) -> list[Path]:
    """Delete committed checkpoints other than the newest `keep_last` and the best by `metric`."""
    found = committed(folder)
    keep = set(found[-keep_last:])
    best = best_checkpoint(found, metric)
    if best is not None:
        keep.add(best)
    deleted = [path for path in found if path not in keep]
    for path in deleted:
        (path / MARKER).unlink()  # uncommit first: a crash mid-delete leaves a folder resume skips
        shutil.rmtree(path)
    return deleted


def best_checkpoint(paths: list[Path], metric: str) -> Path | None:
    """The checkpoint with the best evaluation at its own step (`loss`: lowest; else highest), if any has one."""
    scored = [(score, path) for path in paths if (score := _score(path, metric)) is not None]
    if not scored:
        return None
    sign = -1.0 if metric == "loss" else 1.0
    return max(scored, key=lambda item: sign * item[0])[1]


def _score(path: Path, metric: str) -> float | None:
    metrics = json.loads((path / "trainer_state.json").read_text()).get("metrics") or {}
    return metrics.get(metric)


# ---------------------------------------------------------------- the store


class Checkpoints:
    """The checkpoints of one run: where they go, how many stay, and which one (if any) to resume from."""

    def __init__(
        self,
        folder: Path,
        fingerprint: dict,
        save_total_limit: int = 2,
        metric_for_best: str = "accuracy",
        resume_from: Path | None = None,
    ):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.save_total_limit = save_total_limit
        self.metric_for_best = metric_for_best
        self.resume_from = resume_from

    @classmethod
    def for_run(cls, config: RunConfig, accelerator: Accelerator) -> Checkpoints | None:
        """The run's store, its resume checkpoint checked against this run; None under FSDP/DeepSpeed."""
        t = config.training
        if accelerator.distributed_type in _SHARDED:
            if t.save_every_steps or t.resume:
                raise ConfigError(
                    f"training.save_every_steps / training.resume: checkpoints cover single-process and DDP "
                    f"runs; under {accelerator.distributed_type.value} the optimizer state is sharded and not "
                    f"gathered yet. Set training.save_every_steps=0 and training.resume=null"
                )
            return None
        folder = Path(t.output_dir) / CHECKPOINTS_DIR
        current = fingerprint(config, accelerator.num_processes)
        resume_from = find_resume(t.resume, folder)
        if resume_from is not None:
            check_fingerprint(resume_from, current)
        elif t.resume == "auto":
            logger.info("training.resume=auto: no committed checkpoint in %s, starting from step 0", folder)
        return cls(folder, current, t.save_total_limit, t.metric_for_best, resume_from)

    @property
    def resume_step(self) -> int | None:
        return step_of(self.resume_from) if self.resume_from is not None else None

    def save(self, accelerator, model, optimizer, scheduler, position: Position, progress: dict) -> Path:
        """Write `step-N` (main process), then rotate. Every process must call this: RNG states are gathered."""
        rng = gather_object([rng_state()])
        path = self.folder / f"step-{position.step}"
        if accelerator.is_main_process:
            for stale in self.folder.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            with committed_dir(path, MARKER) as tmp:
                save_file(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.safetensors")
                dump_state(optimizer.state_dict(), tmp, "optimizer")
                dump_state(scheduler.state_dict(), tmp, "scheduler")
                if accelerator.scaler is not None:
                    dump_state(accelerator.scaler.state_dict(), tmp, "scaler")
                dump_state(rng, tmp, "rng_state")
                write_json(tmp / "trainer_state.json", self._trainer_state(position, progress))
            deleted = rotate(self.folder, self.save_total_limit, self.metric_for_best)
            logger.info("checkpoint %s%s", path, f" (removed {[p.name for p in deleted]})" if deleted else "")
        accelerator.wait_for_everyone()
        return path

    def _trainer_state(self, position: Position, progress: dict) -> dict:
        evaluations = progress.get("evaluations") or []
        at_step = [e["eval"] for e in evaluations if e["step"] == position.step]
        return {
            "step": position.step,
            "position": dataclasses.asdict(position),
            **progress,
            "metrics": at_step[-1] if at_step else None,
            "fingerprint": self.fingerprint,
            "peftkit_version": __version__,
        }

    def restore(self, accelerator, model, optimizer, scheduler) -> tuple[Position, dict]:
        """Load `resume_from` into the model, optimizer, scheduler, RNGs and accelerator; return position, progress."""
        path = self.resume_from
        check_safetensors(path / "trainable.safetensors")
        load_trainable(accelerator.unwrap_model(model), load_file(path / "trainable.safetensors"), path)
        optimizer.load_state_dict(load_state(path, "optimizer"))
        scheduler.load_state_dict(load_state(path, "scheduler"))
        if accelerator.scaler is not None and (path / "scaler.json").is_file():
            accelerator.scaler.load_state_dict(load_state(path, "scaler"))
        state = json.loads((path / "trainer_state.json").read_text())
        position = Position(**state["position"])
        accelerator.step = position.micro_step
        set_rng_state(load_state(path, "rng_state")[accelerator.process_index])
        logger.info(
            "resumed from %s: step %d, epoch %d, batch %d",
            path,
            position.step,
            position.epoch,
            position.batch,
        )
        keys = ("losses", "evaluations", "train_samples", "train_seconds")
        return position, {k: state[k] for k in keys if k in state}
