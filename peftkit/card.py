"""Model cards (README.md with Hub YAML front matter) for exported adapters and merged models.

Everything comes from the run's own record: `peftkit.json` (task, labels, base model,
method, a causal-lm run's prompt format) and, when the export starts from a run folder,
`run.json` (config, metrics, versions). `TASKS` holds what differs by task: the Hub
pipeline tag, the metrics, the Auto classes in the usage snippet. Data files are named
by file name only and the base model by its Hub id: a card never holds a path of the
machine it was written on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TaskCard:
    """What a card says differently for each `RunConfig.task`."""

    pipeline_tag: str
    task_name: str
    kind: str
    """What the model is, in the card's first sentence."""
    suffix: str
    """Of the model name: `{base}-{method}-{suffix}`."""
    metrics: tuple[tuple[str, str, str], ...]
    """(Hub metric id, key in run.json's metrics, label in the card)."""
    auto_class: str
    auto_peft_class: str


_GENERATION_METRICS = (("exact_match", "accuracy", "exact match"), ("rouge", "rouge_l", "ROUGE-L"))
TASKS = {
    "classification": TaskCard(
        "text-classification", "Text Classification", "A text classifier", "classifier",
        (("accuracy", "accuracy", "accuracy"), ("f1", "macro_f1", "macro F1")),
        "AutoModelForSequenceClassification", "AutoPeftModelForSequenceClassification",
    ),
    "seq2seq": TaskCard(
        "text2text-generation", "Text2Text Generation", "A text-to-text (encoder-decoder) model", "seq2seq",
        _GENERATION_METRICS,
        "AutoModelForSeq2SeqLM", "AutoPeftModelForSeq2SeqLM",
    ),
    "causal-lm": TaskCard(
        "text-generation", "Text Generation", "An instruction-tuned causal language model", "causal-lm",
        _GENERATION_METRICS,
        "AutoModelForCausalLM", "AutoPeftModelForCausalLM",
    ),
}  # fmt: skip


def task_of(metadata: dict) -> TaskCard:
    return TASKS[metadata.get("task", "classification")]


def is_generative(metadata: dict) -> bool:
    return metadata.get("task", "classification") != "classification"


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
        _prompt_format(metadata),
        _hyperparameters(config),
        _results(metadata, metrics, config),
        _usage(metadata, merged),
        _versions(metadata, record),
    ]
    return f"---\n{front}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def card_data(metadata: dict, config: dict, metrics: dict, merged: bool, license: str) -> ModelCardData:
    method, task = metadata["method"], task_of(metadata)
    tags = ["peftkit", method, task.pipeline_tag] + (["merged"] if merged else [])
    adapter = config.get("adapter", {})
    tags += [name for name, key in (("dora", "use_dora"), ("rslora", "use_rslora")) if adapter.get(key)]
    datasets = dataset_names(config.get("data", {}))
    name = _name(metadata, merged)
    return ModelCardData(
        model_name=name,
        base_model=metadata["base_model_id"],
        library_name="transformers" if merged else "peft",
        pipeline_tag=task.pipeline_tag,
        license=license,
        tags=tags,
        datasets=datasets or None,
        metrics=[metric for metric, _, _ in task.metrics] if metrics else None,
        eval_results=_eval_results(task, config.get("data", {}), metrics) or None,
    )


def dataset_names(data: dict) -> list[str]:
    """The Hub dataset id, or the data files by file name only (never a local path)."""
    if data.get("dataset"):
        return [data["dataset"]]
    files = [data.get(k) for k in ("train_file", "validation_file", "test_file")]
    return [file_name(f) for f in files if f]


def file_name(path: str) -> str:
    return Path(path.removeprefix("bundled:")).name


def _eval_results(task: TaskCard, data: dict, metrics: dict) -> list[EvalResult]:
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
        for metric, key, label in task.metrics:
            if key in metrics[split]:
                results.append(
                    EvalResult(
                        task_type=task.pipeline_tag,
                        task_name=task.task_name,
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
    return f"{base}-{metadata['method']}-{task_of(metadata).suffix}" + ("-merged" if merged_adapter else "")


def _title(metadata: dict, merged: bool) -> str:
    base, method = metadata["base_model_id"], _method_name(metadata)
    head = "" if is_generative(metadata) else ", with its classifier head"
    what = (
        f"the {method} adapter merged into the weights of `{base}`: a plain transformers model, no peft needed"
        if merged
        else f"a {method} adapter for `{base}`{head}"
    )
    if metadata["method"] == "full":
        what = f"every weight of `{base}` fine-tuned: a plain transformers model, no peft needed"
    return f"# {_name(metadata, merged)}\n\n{task_of(metadata).kind} fine-tuned with peftkit: {what}. {_outputs(metadata)}".rstrip()


def _outputs(metadata: dict) -> str:
    """What the model writes: its labels, or its label words (seq2seq classification as generation)."""
    labels = ", ".join(f"`{label}`" for label in metadata["labels"])
    if not is_generative(metadata):
        return f"{len(metadata['labels'])} labels: {labels}."
    if metadata["labels"]:
        return f"It answers with one of {len(metadata['labels'])} label words: {labels}."
    return ""


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
        head = "" if is_generative(metadata) else ", classifier head included"
        lines.append(
            f"- trainable parameters: {params['trainable']:,} of {params['total']:,} ({share:.2f}%){head}"
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
            f"(passed: {check['checked']}); {_agreement(check)}",
        ]
    return "\n".join(lines)


def _agreement(check: dict) -> str:
    if "same_label_fraction" in check:
        return f"same label on {100 * check['same_label_fraction']:.0f}% of them"
    return (
        f"the same greedy continuation on {100 * check['same_generation_fraction']:.0f}% of them "
        f"(the same token on {100 * check['same_token_fraction']:.0f}% of {check['tokens']} tokens)"
    )


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
    lines.append(_columns(metadata.get("task", "classification"), data | columns))
    return "\n".join(lines)


def _columns(task: str, columns: dict) -> str:
    """The data columns of `task` (peftkit.json's, completed by run.json's for older adapters)."""
    length = f"max length {columns['max_length']} tokens"
    if task == "causal-lm":
        if columns.get("messages_column"):
            return f"- columns: chat messages `{columns['messages_column']}`; {length}"
        return (
            f"- columns: prompt `{columns.get('prompt_column')}`, response `{columns.get('response_column')}` "
            f"(the loss on the response tokens only); {length}"
        )
    if task == "seq2seq":
        target = (
            f"target `{columns['target_column']}` (max {columns.get('max_target_length')} tokens)"
            if columns.get("target_column")
            else f"label `{columns['label_column']}`, written as its label word"
        )
        return f"- columns: input `{columns['text_column']}`, {target}; {length}"
    text = f"`{columns['text_column']}`" + (
        f" + `{columns['text_pair_column']}`" if columns.get("text_pair_column") else ""
    )
    return f"- columns: text {text}, label `{columns['label_column']}`; {length}"


def _prompt_format(metadata: dict) -> str:
    """For generative models: how to write an input so that it looks like the training prompts."""
    task = metadata.get("task", "classification")
    if task == "seq2seq":
        return (
            "## Input format\n\nThe input text as is: no template and no prefix, truncated to "
            f"{metadata['data']['max_length']} tokens by the tokenizer saved here."
        )
    prompt = metadata.get("prompt")
    if task != "causal-lm" or not prompt:
        return ""
    name = prompt["chat_template"]
    source = (
        f"peftkit's `{name}` chat template" if name != "tokenizer" else "the base model's own chat template"
    )
    return (
        f"## Prompt format\n\nPrompts are rendered with {source} (`data.chat_template`), saved with the "
        "tokenizer here (`chat_template.jinja`): `tokenizer.apply_chat_template(messages, "
        "add_generation_prompt=True)` reproduces them. One user turn, `{prompt}`, renders as:\n\n"
        f"```text\n{prompt['example']}\n```\n\nexactly, as a Python string: `{json.dumps(prompt['example'])}`. "
        "The model writes the answer after it and ends it with the tokenizer's EOS token."
    )


def _hyperparameters(config: dict) -> str:
    training = config.get("training")
    if not training:
        return ""
    rows = [f"| `{k}` | {training[k]} |" for k in TRAINING_FIELDS if k in training]
    return "## Training hyper-parameters\n\n| field | value |\n|---|---|\n" + "\n".join(rows)


def _results(metadata: dict, metrics: dict, config: dict) -> str:
    task = task_of(metadata)
    rows = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            values = " | ".join(f"{m.get(key, float('nan')):.4f}" for _, key, _ in task.metrics)
            rows.append(
                f"| {split} | {values} | {m.get('loss', float('nan')):.4f} | {m.get('samples', '')} |"
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
    if is_generative(metadata):
        max_new_tokens = config.get("training", {}).get("max_new_tokens")
        note += (
            f"\n\nScored on greedy generations{f' of up to {max_new_tokens} new tokens' if max_new_tokens else ''}: "
            "exact match after lower-casing and collapsing whitespace; ROUGE-L F1 on lower-cased whitespace "
            "tokens; loss: the teacher-forced cross-entropy per target token."
        )
    header = " | ".join(label for _, _, label in task.metrics)
    return (
        f"## Results\n\n| split | {header} | loss | samples |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + note
    )


def _usage(metadata: dict, merged: bool) -> str:
    return (
        _generation_usage(metadata, merged)
        if is_generative(metadata)
        else _classifier_usage(metadata, merged)
    )


def _classifier_usage(metadata: dict, merged: bool) -> str:
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
            'clf("some text")\n```' + _loading_notes(metadata, merged) + "\n\n" + peftkit_snippet
        )
    return (
        "## How to use\n\nWith peft, on the base model (the classifier head is saved in the adapter):\n\n```python\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        "base = AutoModelForSequenceClassification.from_pretrained(\n"
        f'    "{metadata["base_model_id"]}",\n    num_labels={len(labels)},\n    id2label={id2label},\n'
        f"    pad_token_id={metadata.get('pad_token_id')},\n)\n"
        f'model = PeftModel.from_pretrained(base, "{PLACEHOLDER}").eval()\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{PLACEHOLDER}")\n```'
        + _loading_notes(metadata, merged)
        + "\n\n"
        + peftkit_snippet
    )


def _generation_usage(metadata: dict, merged: bool) -> str:
    """Greedy generation with peft (adapter) or transformers alone (merged), prompts rendered as in training."""
    task = task_of(metadata)
    if merged:
        intro = "With transformers alone"
        imports = f"from transformers import {task.auto_class}, AutoTokenizer"
        loader = task.auto_class
    else:
        intro = f"With peft, which loads the base model `{metadata['base_model_id']}` named in `adapter_config.json`"
        imports = f"from peft import {task.auto_peft_class}\nfrom transformers import AutoTokenizer"
        loader = task.auto_peft_class
    inputs, new_tokens = _generation_inputs(metadata)
    snippet = (
        f'{imports}\n\nmodel = {loader}.from_pretrained("{PLACEHOLDER}").eval()\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{PLACEHOLDER}")\n{inputs}'
        "output = model.generate(\n    **inputs, max_new_tokens=32, do_sample=False, "
        "pad_token_id=tokenizer.pad_token_id\n)\n"
        f"print(tokenizer.decode({new_tokens}, skip_special_tokens=True))\n"
    )
    peftkit_snippet = (
        f'With peftkit (a Hub id or a local folder): `peftkit generate "{PLACEHOLDER}" "some text"`, or\n\n'
        f'```python\nimport peftkit\n\ngenerator = peftkit.load_generator("{PLACEHOLDER}")\n'
        'generator.generate(["some text"], max_new_tokens=32)\n```'
    )
    return (
        f"## How to use\n\n{intro}, greedy decoding:\n\n```python\n{snippet}```"
        + _loading_notes(metadata, merged)
        + "\n\n"
        + peftkit_snippet
    )


def _generation_inputs(metadata: dict) -> tuple[str, str]:
    """(code that tokenizes an input as training did, the expression of the generated tokens)."""
    if metadata["task"] == "causal-lm":
        inputs = (
            'messages = [{"role": "user", "content": "some instruction"}]\n'
            "inputs = tokenizer.apply_chat_template(\n"
            '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"\n)\n'
        )
        return inputs, 'output[0, inputs["input_ids"].shape[1] :]'
    max_length = metadata["data"]["max_length"]
    inputs = (
        f'inputs = tokenizer("some text", truncation=True, max_length={max_length}, return_tensors="pt")\n'
    )
    return inputs, "output[0]"


def _loading_notes(metadata: dict, merged: bool) -> str:
    if merged:
        return (
            "\n\nThe weights are 4-bit (bitsandbytes): install `bitsandbytes` to load them."
            if metadata.get("requantized")
            else ""
        )
    notes = ""
    if metadata.get("quantization"):
        notes += (
            "\n\nThe adapter was trained on a 4-bit base; a full-precision base gives close but not identical "
            "outputs (pass the same `BitsAndBytesConfig` to reproduce training exactly)."
        )
    if metadata["method"] == "prefix":
        notes += (
            "\n\nA prefix-tuning adapter with peft 0.21 and transformers 5: load the base yourself, call "
            '`peftkit.adapters.prepare_base(base, "prefix")` on it, then `PeftModel.from_pretrained(base, ...)`: '
            "peft looks for a `past_key_values` argument that transformers 5 renamed to `cache` (peftkit's own "
            "loaders do this)."
        )
    return notes


def _versions(metadata: dict, record: dict | None) -> str:
    versions = (record or {}).get("versions") or {"peftkit": metadata.get("peftkit_version")}
    return "## Framework versions\n\n" + "\n".join(
        f"- {name} {version}" for name, version in versions.items()
    )
