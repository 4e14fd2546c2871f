"""Load a trained adapter folder (or a run folder holding one, a merged export, or a Hub id) and classify texts.

A Classifier can hold several adapters trained on one base (`load_adapter`), each with its own head and
labels, and switch between them per call (`predict(..., adapter=NAME)`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peftkit.adapters import prepare_base  # also registers peftkit's own peft methods (bottleneck)
from peftkit.adapters.stack import activate_stack, load_stacked
from peftkit.export import METADATA_FILE
from peftkit.io import safe_name
from peftkit.model import resolve_model_path
from peftkit.safety import (
    CONVERT_HINT,
    check_adapter_config,
    check_safetensors,
    pickled_files,
    refuse_pickled_weights,
)

# The last layer of each family's classification head: its rows are the labels.
HEAD_OUTPUTS = (".classifier.weight", ".score.weight", ".out_proj.weight")


class AdapterFolderError(ValueError):
    """A folder that is not a loadable peftkit adapter; the message says what is missing."""


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]


def find_adapter_dir(path: str | Path, metadata: bool = True) -> Path:
    """A run folder (with `adapter/`) or an adapter folder -> the adapter folder, checked.

    `metadata=False` checks a stacked adapter's sub-folder, which has no peftkit.json or head of its own.
    """
    path = Path(path)
    folder = path / "adapter" if (path / "adapter" / METADATA_FILE).is_file() else path
    if not (folder / "adapter_config.json").is_file():
        raise AdapterFolderError(
            f"{str(path)!r} holds no adapter_config.json: not a trained adapter or run folder"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = pickled_files(folder)
        hint = f" (found {pickled}: peftkit never unpickles weights; {CONVERT_HINT})" if pickled else ""
        raise AdapterFolderError(f"{str(folder)!r} holds no adapter_model.safetensors{hint}")
    if metadata and not (folder / METADATA_FILE).is_file():
        raise AdapterFolderError(f"{str(folder)!r} has no {METADATA_FILE}: it was not written by peftkit")
    check_adapter_config(folder)  # no remote code, a registered peft method
    header = check_safetensors(folder / "adapter_model.safetensors")
    if metadata:
        check_head_labels(folder, header, json.loads((folder / METADATA_FILE).read_text()))
    return folder


def check_head_labels(folder: Path, header: dict, metadata: dict) -> None:
    """Refuse an adapter whose saved classifier head has another number of outputs than its labels."""
    labels = metadata.get("labels") or []
    rows = sorted(
        {
            entry["shape"][0]
            for key, entry in header.items()
            if key.endswith(HEAD_OUTPUTS) and entry.get("shape")
        }
    )
    if rows and rows != [len(labels)]:
        raise AdapterFolderError(
            f"{folder.name}: the saved classifier head has {rows[0]} outputs but {METADATA_FILE} lists "
            f"{len(labels)} labels {labels}; the head and num_labels must agree (retrain, or fix the labels)"
        )


class Classifier:
    """A base model with a trained adapter and head, ready to predict labels."""

    def __init__(self, model: PeftModel, tokenizer, metadata: dict, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.labels: list[str] = metadata["labels"]
        self.device = device
        self.adapters: dict[str, dict] = (
            {model.active_adapters[0]: metadata} if isinstance(model, PeftModel) else {}
        )  # a stacked model's first active adapter is its task adapter
        """Adapter name -> its peftkit.json metadata (labels, base model); empty for a merged model."""

    def load_adapter(self, path: str | Path, adapter_name: str) -> None:
        """Load another adapter trained on the same base (with its own head and labels) as `adapter_name`."""
        if not self.adapters:
            raise AdapterFolderError("a merged model holds no adapters: load an adapter folder to add others")
        if self.metadata.get("stacked"):
            raise AdapterFolderError(
                "this classifier stacks its task adapter on a domain adapter (domain.dapt_mode: stack); "
                "switching adapters on it is not supported: load the other adapter in its own classifier"
            )
        safe_name(adapter_name, "adapter name")  # peft saves a named adapter in a folder of that name
        folder = find_adapter_dir(local_folder(path))
        metadata = json.loads((folder / METADATA_FILE).read_text())
        first = next(iter(self.adapters.values()))
        check_base_model(metadata, first["base_model"])
        if len(metadata["labels"]) != len(self.labels) or metadata["model_type"] != first["model_type"]:
            raise AdapterFolderError(
                f"{folder.name}: {len(metadata['labels'])} labels on a {metadata['model_type']} base; the loaded "
                f"base has a {len(self.labels)}-label head on {first['model_type']}: load it on its own"
            )
        self.model.load_adapter(folder, adapter_name=adapter_name)
        self.adapters[adapter_name] = metadata

    @contextmanager
    def using(self, adapter: str | None):
        """Within the block, predict with `adapter` (its head and labels); None keeps the active one."""
        if adapter is None:
            yield self
            return
        if adapter not in self.adapters:
            raise ValueError(f"no adapter {adapter!r}; loaded: {', '.join(self.adapters)}")
        previous = self.model.active_adapters[0]
        self._activate(adapter)
        try:
            yield self
        finally:
            self._activate(previous)

    def _activate(self, name: str) -> None:
        stacked = self.adapters[name].get("stacked")
        if stacked:
            activate_stack(self.model, name, stacked)
        else:
            self.model.set_adapter(name)
        self.metadata = self.adapters[name]
        self.labels = self.metadata["labels"]

    @torch.no_grad()
    def logits(
        self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Logits for `texts` in input order; batches are formed by length to save padding."""
        max_length = self.metadata["data"]["max_length"]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), len(self.labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            pairs = [text_pairs[i] for i in idx] if text_pairs else None
            batch = self.tokenizer(
                [texts[i] for i in idx],
                pairs,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            out[idx] = self.model(**batch).logits.float().cpu()
        return out

    def predict(
        self,
        texts: list[str] | str,
        text_pairs: list[str] | None = None,
        batch_size: int = 64,
        adapter: str | None = None,
    ):
        """Labels and probabilities for each text (a single string gives a single Prediction).

        `adapter` picks one of the adapters loaded with `load_adapter` for this call.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        with self.using(adapter):
            probs = self.logits(texts, text_pairs, batch_size).softmax(-1)
            labels = self.labels
        predictions = [
            Prediction(
                label=labels[int(p.argmax())],
                score=float(p.max()),
                probabilities={label: float(v) for label, v in zip(labels, p, strict=True)},
            )
            for p in probs
        ]
        return predictions[0] if single else predictions


def load_classifier(path: str | Path, device: str | None = None, base_model: str | None = None) -> Classifier:
    """Load the base model named in the adapter's metadata, attach the adapter and head, and return a Classifier.

    `path`: a run, adapter or merged-export folder, or a Hub id (fetched first). `base_model` loads the
    adapter on that base instead (a local copy, say), refused unless its name and shapes fit the adapter.
    """
    folder = local_folder(path)
    if (folder / "model" / METADATA_FILE).is_file():  # the run folder of full fine-tuning
        folder = folder / "model"
    if (folder / "head" / METADATA_FILE).is_file():  # the run folder of feature extraction
        folder = folder / "head"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if _format(folder) == "features":
        return _load_feature_head(folder, device)
    merged = is_merged_model(folder)
    if not merged:
        folder = find_adapter_dir(folder)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if metadata.get("task", "classification") != "classification":
        raise AdapterFolderError(
            f"{str(path)!r} was trained for task {metadata['task']!r}, not classification: use peftkit generate"
        )
    if merged:
        return _load_merged(folder, metadata, device)
    labels = metadata["labels"]
    if base_model is not None:
        check_base_model(metadata, base_model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base_path = resolve_model_path(base_model or metadata["base_model"])
    refuse_pickled_weights(base_path)
    try:
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            use_safetensors=True,
            revision=None if base_model else metadata.get("base_model_revision"),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            pad_token_id=metadata["pad_token_id"],
        )
    except OSError as err:
        raise AdapterFolderError(
            f"cannot load the base model {base_model or metadata['base_model']!r} ({err}); "
            "pass --base-model with a local copy or its Hub id"
        ) from None
    if base_model is not None:
        check_adapter_fits(folder, metadata, base, base_model)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    model = load_peft_model(base, folder, metadata).to(device).eval()
    return Classifier(model, tokenizer, metadata, device)


def load_peft_model(base: torch.nn.Module, folder: Path, metadata: dict) -> PeftModel:
    """The adapter in `folder` on `base`; with a stacked domain adapter (`adapters/stack.py`) under it."""
    prepare_base(base, metadata.get("method", ""))
    model = PeftModel.from_pretrained(base, folder)
    stacked = metadata.get("stacked")
    if stacked:
        safe_name(stacked, "stacked adapter name")
        find_adapter_dir(folder / stacked, metadata=False)
        load_stacked(model, folder, stacked)
    return model


def local_folder(path: str | Path) -> Path:
    """A local folder as it is; a Hub repo id that is not a local path is downloaded first (`hub.download`)."""
    from peftkit import hub

    if Path(path).exists() or not hub.looks_like_repo_id(str(path)):
        return Path(path)
    return hub.download(str(path))


def is_merged_model(folder: Path) -> bool:
    """A merged export or a fully fine-tuned model: a plain transformers model folder."""
    meta = folder / METADATA_FILE
    return meta.is_file() and json.loads(meta.read_text()).get("format") in ("merged", "full")


def _format(folder: Path) -> str | None:
    meta = folder / METADATA_FILE
    return json.loads(meta.read_text()).get("format") if meta.is_file() else None


def _load_feature_head(folder: Path, device: torch.device) -> Classifier:
    """A feature-extraction run's head (`adapter.method: features`) on its frozen base model."""
    from peftkit.strategies.features import load_feature_classifier

    metadata = json.loads((folder / METADATA_FILE).read_text())
    model = load_feature_classifier(folder, metadata).to(device)
    return Classifier(model, AutoTokenizer.from_pretrained(folder), metadata, device)


def _load_merged(folder: Path, metadata: dict, device: torch.device) -> Classifier:
    model = load_merged_model(AutoModelForSequenceClassification, folder, device)
    return Classifier(model, AutoTokenizer.from_pretrained(folder), metadata, device)


def load_merged_model(auto_class, folder: Path, device: torch.device | str):
    """A merged export or fully fine-tuned model folder as `auto_class`, from safetensors only, in eval mode on
    `device` (bitsandbytes places a quantized one itself)."""
    refuse_pickled_weights(folder)
    model = auto_class.from_pretrained(folder, use_safetensors=True)
    if not getattr(model, "is_quantized", False):
        model = model.to(device)
    return model.eval()


def check_base_model(metadata: dict, base_model: str) -> None:
    """Refuse a base model whose name differs from the one the adapter was trained on.

    Names are compared by their last part, so a local copy (`/models/all-MiniLM-L6-v2`),
    the Hub id (`sentence-transformers/all-MiniLM-L6-v2`) and `bundled:all-MiniLM-L6-v2` agree.
    """
    trained = metadata["base_model"]
    if _base_key(trained) != _base_key(base_model):
        raise AdapterFolderError(
            f"the adapter was trained on base model {trained!r}, not {base_model!r}: "
            f"load it on {trained!r} (or a copy of it in a folder of that name)"
        )


def _base_key(name: str) -> str:
    return name.removeprefix("bundled:").rstrip("/").split("/")[-1].lower()


def check_adapter_fits(folder: Path, metadata: dict, base: torch.nn.Module, base_name: str) -> None:
    """Refuse a base model whose type or layer shapes differ from those the adapter's weights were made for."""
    if base.config.model_type != metadata["model_type"]:
        raise AdapterFolderError(
            f"the adapter was trained on a {metadata['model_type']} model; {base_name!r} is {base.config.model_type}"
        )
    modules, params = dict(base.named_modules()), {n: tuple(p.shape) for n, p in base.named_parameters()}
    problems = []
    with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
        for key in weights.keys():
            shape = tuple(weights.get_slice(key).get_shape())
            problem = _misfit(key.removeprefix("base_model.model."), shape, modules, params)
            if problem:
                problems.append(problem)
    if problems:
        raise AdapterFolderError(
            f"the adapter in {folder.name} does not fit base model {base_name!r}: {len(problems)} weights differ, "
            f"e.g. {'; '.join(problems[:3])}"
        )


def _misfit(key: str, shape: tuple, modules: dict, params: dict) -> str | None:
    """Why the adapter weight `key` of `shape` does not fit the base, or None (LoRA factors and heads are checked)."""
    if key in params:
        return None if params[key] == shape else f"{key}: adapter {shape}, base {params[key]}"
    for marker, dim, attr in ((".lora_A.", -1, "in_features"), (".lora_B.", 0, "out_features")):
        if marker in key:
            name = key.split(marker)[0]
            if name not in modules:
                return f"{name}: no such layer in the base"
            expected = getattr(modules[name], attr, None)
            if expected is not None and shape[dim] != expected:
                return f"{name}: adapter made for {attr}={shape[dim]}, base has {expected}"
    return None
