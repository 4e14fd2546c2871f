"""Model cards (README.md with Hub YAML front matter) for exported adapters and merged models.

Everything comes from the run's own record: `peftkit.json` (labels, base model,
method) and, when the export starts from a run folder, `run.json` (config,
metrics, versions). Data files are named by file name only and the base model by
its Hub id: a card never holds a path of the machine it was written on.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

# method -> (short name, reference)
METHOD_NAMES = {
    "lora": ("LoRA", "LoRA (Hu et al. 2021)"),
    "qlora": ("QLoRA", "QLoRA: LoRA on a 4-bit quantized base (Dettmers et al. 2023)"),
    "ia3": ("IA3", "IA3 (Liu et al. 2022)"),
    "bottleneck": ("bottleneck", "bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020)"),
    "prefix": ("prefix-tuning", "prefix tuning (Li & Liang 2021)"),
    "prompt": ("prompt-tuning", "prompt tuning (Lester et al. 2021)"),
    "full": ("full fine-tuning", "full fine-tuning (every weight trains, no adapter)"),
}
# recipe fields that describe each method (config.AdapterConfig)
METHOD_FIELDS = {
    "lora": ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora", "init_lora_weights",
             "layers_to_transform", "loraplus_lr_ratio"),
    "ia3": ("target_modules",),
    "bottleneck": ("reduction_factor", "non_linearity", "placement", "scaling"),
    "prefix": ("num_virtual_tokens", "prefix_projection"),
    "prompt": ("num_virtual_tokens",),
}  # fmt: skip
METHOD_FIELDS["qlora"] = METHOD_FIELDS["lora"]
TRAINING_FIELDS = (
    "num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
    "warmup_ratio", "weight_decay", "max_grad_norm", "mixed_precision", "seed",
)  # fmt: skip
PLACEHOLDER = "<this repo id or folder>"


def model_card(
    metadata: dict,
    record: dict | None,
    merged: bool,
    license: str = "apache-2.0",
    check: dict | None = None,
    peft_config: dict | None = None,
) -> str:
    """The README.md of an export: YAML front matter for the Hub, then a body for people.

    `peft_config` (adapter_config.json) names the layers the adapter actually targets.
    """
    config = (record or {}).get("config", {})
    metrics = (record or {}).get("metrics", {})
    front = card_data(metadata, config, metrics, merged, license).to_yaml()
    sections = [
        _title(metadata, merged),
        _method(metadata, config, metrics, check, peft_config or {}),
        _data(metadata, config),
        _hyperparameters(config),
        _results(metrics),
        _usage(metadata, merged),
        _versions(metadata, record),
    ]
    return f"---\n{front}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def card_data(metadata: dict, config: dict, metrics: dict, merged: bool, license: str) -> ModelCardData:
    method = metadata["method"]
    tags = ["peftkit", method, "text-classification"] + (["merged"] if merged else [])
    adapter = config.get("adapter", {})
    tags += [name for name, key in (("dora", "use_dora"), ("rslora", "use_rslora")) if adapter.get(key)]
    datasets = dataset_names(config.get("data", {}))
    name = _name(metadata, merged)
    return ModelCardData(
        model_name=name,
        base_model=metadata["base_model_id"],
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-classification",
        license=license,
        tags=tags,
        datasets=datasets or None,
        metrics=["accuracy", "f1"] if metrics else None,
        eval_results=_eval_results(config.get("data", {}), metrics) or None,
    )


def dataset_names(data: dict) -> list[str]:
    """The Hub dataset id, or the data files by file name only (never a local path)."""
    if data.get("dataset"):
        return [data["dataset"]]
    files = [data.get(k) for k in ("train_file", "validation_file", "test_file")]
    return [file_name(f) for f in files if f]


def file_name(path: str) -> str:
    return Path(path.removeprefix("bundled:")).name


def _eval_results(data: dict, metrics: dict) -> list[EvalResult]:
    results = []
    for split in ("validation", "test"):
        if split not in metrics:
            continue
        dataset = data.get("dataset") or file_name(
            data.get(f"{split}_file") or data.get("train_file") or "unknown"
        )
        if split == "validation" and not data.get("dataset") and not data.get("validation_file"):
            split_name = f"validation ({data.get('validation_ratio')} of the training file)"
        else:
            split_name = split
        for metric, key, label in (("accuracy", "accuracy", "accuracy"), ("f1", "macro_f1", "macro F1")):
            if key in metrics[split]:
                results.append(
                    EvalResult(
                        task_type="text-classification",
                        task_name="Text Classification",
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split=split_name,
                        metric_type=metric,
                        metric_name=f"{split} {label}",
                        metric_value=round(float(metrics[split][key]), 4),
                    )
                )
    return results


def _name(metadata: dict, merged: bool) -> str:
    base = metadata["base_model_id"].split("/")[-1]
    merged_adapter = merged and metadata["method"] != "full"  # a fully fine-tuned model has nothing merged
    return f"{base}-{metadata['method']}-classifier" + ("-merged" if merged_adapter else "")


def _title(metadata: dict, merged: bool) -> str:
    labels = metadata["labels"]
    what = (
        f"the {_method_name(metadata)} adapter merged into the weights of `{metadata['base_model_id']}`: a plain "
        "transformers model, no peft needed"
        if merged
        else f"a {_method_name(metadata)} adapter for `{metadata['base_model_id']}`, with its classifier head"
    )
    if metadata["method"] == "full":
        what = f"every weight of `{metadata['base_model_id']}` fine-tuned: a plain transformers model, no peft needed"
    return (
        f"# {_name(metadata, merged)}\n\n"
        f"A text classifier fine-tuned with peftkit: {what}. "
        f"{len(labels)} labels: {', '.join(f'`{label}`' for label in labels)}."
    )


def _method_name(metadata: dict, long: bool = False) -> str:
    method = metadata["method"]
    return METHOD_NAMES.get(method, (method, method))[long]


def _method(metadata: dict, config: dict, metrics: dict, check: dict | None, peft_config: dict) -> str:
    lines = ["## Method", "", f"- method: {_method_name(metadata, long=True)}"]
    adapter = config.get("adapter", {})
    for field in METHOD_FIELDS.get(metadata["method"], ()):
        if (
            adapter.get(field) is not None and adapter.get(field) is not False
        ):  # options left off are not listed
            lines.append(f"- `{field}`: {adapter[field]}")
    targets = peft_config.get("target_modules")
    if isinstance(targets, list):  # what `auto` / `all-linear` resolved to
        lines.append(f"- adapted layers: {', '.join(sorted(targets))}")
    q = metadata.get("quantization")
    if q:
        details = ", ".join(f"{k.removeprefix('bnb_4bit_')} {v}" for k, v in q.items() if k != "mode")
        lines.append(f"- base quantized during training: {q['mode']} bitsandbytes ({details})")
    params = metrics.get("parameters")
    if params:
        share = 100 * params["trainable"] / params["total"]
        lines.append(
            f"- trainable parameters: {params['trainable']:,} of {params['total']:,} ({share:.2f}%), "
            "classifier head included"
        )
    if "combined_from" in metadata:
        sources = ", ".join(f"{s['adapter']} x {s['weight']}" for s in metadata["combined_from"])
        lines.append(f"- combined from: {sources} ({metadata['combination_type']}); head of the first")
    if check:
        lines += [
            f"- merged with peft's `merge_and_unload`{_merge_note(metadata)}; saved as {metadata.get('dtype')}"
            + (", requantized to 4 bit" if metadata.get("requantized") else ""),
            f"- merge check on {check['probe']}: max |logit diff| {check['max_logit_diff']:.2e}, "
            f"max |probability diff| {check['max_probability_diff']:.2e} vs the adapter model "
            f"(passed: {check['checked']}); same label on {100 * check['same_label_fraction']:.0f}% of them",
        ]
    return "\n".join(lines)


def _merge_note(metadata: dict) -> str:
    if metadata.get("quantization") or metadata["method"] == "qlora":
        return " into the dequantized (float32) base the adapter was trained against"
    return ""


def _data(metadata: dict, config: dict) -> str:
    data = config.get("data", {})
    columns = metadata["data"]
    lines = ["## Data", ""]
    if not data:
        lines.append("- training data: not recorded (exported from an adapter folder without its run.json)")
    if data.get("dataset"):
        lines.append(
            f"- dataset: `{data['dataset']}` (splits {data.get('train_split')}, {data.get('validation_split')})"
        )
    for split in ("train", "validation", "test"):
        if data.get(f"{split}_file"):
            lines.append(f"- {split}: `{file_name(data[f'{split}_file'])}`")
    if data and not data.get("validation_file") and not data.get("dataset"):
        lines.append(f"- validation: {data.get('validation_ratio')} of the training rows (seeded)")
    if data.get("max_train_samples"):
        lines.append(f"- training rows used: the first {data['max_train_samples']} after a seeded shuffle")
    text = f"`{columns['text_column']}`" + (
        f" + `{columns['text_pair_column']}`" if columns.get("text_pair_column") else ""
    )
    lines.append(
        f"- columns: text {text}, label `{columns['label_column']}`; max length {columns['max_length']} tokens"
    )
    return "\n".join(lines)


def _hyperparameters(config: dict) -> str:
    training = config.get("training")
    if not training:
        return ""
    rows = [f"| `{k}` | {training[k]} |" for k in TRAINING_FIELDS if k in training]
    return "## Training hyper-parameters\n\n| field | value |\n|---|---|\n" + "\n".join(rows)


def _results(metrics: dict) -> str:
    rows = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            rows.append(
                f"| {split} | {m['accuracy']:.4f} | {m.get('macro_f1', float('nan')):.4f} | "
                f"{m.get('loss', float('nan')):.4f} | {m.get('samples', '')} |"
            )
    if not rows:
        return ""
    train = metrics.get("train", {})
    note = (
        f"\n\nTraining: {train['steps']} optimizer steps, {train['epochs']} epochs, "
        f"{train['samples_per_second']:.1f} samples/s."
        if train.get("steps")
        else ""
    )
    return (
        "## Results\n\n| split | accuracy | macro-F1 | loss | samples |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + note
    )


def _usage(metadata: dict, merged: bool) -> str:
    labels = metadata["labels"]
    id2label = {i: label for i, label in enumerate(labels)}
    peftkit_snippet = (
        "With peftkit (a Hub id or a local folder):\n\n```python\nimport peftkit\n\n"
        f'clf = peftkit.load_classifier("{PLACEHOLDER}")\nclf.predict("some text")  # Prediction(label=..., '
        f'score=..., probabilities=...)\n```\n\nor `peftkit predict "{PLACEHOLDER}" "some text"`.'
    )
    if merged:
        return (
            "## How to use\n\nWith transformers alone (labels are in the config):\n\n```python\n"
            f'from transformers import pipeline\n\nclf = pipeline("text-classification", model="{PLACEHOLDER}")\n'
            'clf("some text")\n```\n\n'
            + (
                "The weights are 4-bit (bitsandbytes): install `bitsandbytes` to load them.\n\n"
                if metadata.get("requantized")
                else ""
            )
            + peftkit_snippet
        )
    quantized = (
        "\n\nThe adapter was trained on a 4-bit base; a full-precision base gives close but not identical "
        "outputs (pass the same `BitsAndBytesConfig` to reproduce training exactly)."
        if metadata.get("quantization")
        else ""
    )
    return (
        "## How to use\n\nWith peft, on the base model (the classifier head is saved in the adapter):\n\n```python\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        "base = AutoModelForSequenceClassification.from_pretrained(\n"
        f'    "{metadata["base_model_id"]}",\n    num_labels={len(labels)},\n    id2label={id2label},\n'
        f"    pad_token_id={metadata.get('pad_token_id')},\n)\n"
        f'model = PeftModel.from_pretrained(base, "{PLACEHOLDER}").eval()\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{PLACEHOLDER}")\n```'
        + quantized
        + "\n\n"
        + peftkit_snippet
    )


def _versions(metadata: dict, record: dict | None) -> str:
    versions = (record or {}).get("versions") or {"peftkit": metadata.get("peftkit_version")}
    return "## Framework versions\n\n" + "\n".join(
        f"- {name} {version}" for name, version in versions.items()
    )
