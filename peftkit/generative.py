"""The generative tasks: `seq2seq` (T5/BART-class, text in -> text out) and `causal-lm` (LLaMA-class
instruction/chat tuning), trained with the same loop, adapters, checkpoints and saving as classification.

- `seq2seq`: `text_column` -> `target_column` (free text: rewriting, summarising), or, without a target
  column, classification as generation: the model writes the class's word (`data.label_words`, else the
  label name) and is scored by exact match.
- `causal-lm`: prompt/response pairs or chat messages rendered with a chat template (`templates.py`), the
  loss on the response tokens only. With `data.packing` each training batch is flattened into one row
  whose position ids restart at every example (transformers' `DataCollatorWithFlattening`): transformers 5
  turns position ids that restart, with no attention mask, into a block-diagonal causal mask (sdpa and
  eager on CPU; flash-attention's varlen kernels on GPU), so examples do not attend to each other and the
  loss equals the unpacked one.

Both are evaluated by generation (`generation.py`). `api.finetune` dispatches here on `config.task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PreTrainedTokenizerBase

from peftkit.config import ConfigError, DataConfig, RunConfig
from peftkit.data import DataError, load_raw_splits, read_splits
from peftkit.generation import GenerationSet, evaluate_generative
from peftkit.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    TemplateError,
    generation_prompt,
    prompt_response_messages,
    render_chat,
    use_chat_template,
)

logger = logging.getLogger(__name__)

GENERATIVE_TASKS = ("seq2seq", "causal-lm")

# Fields only some tasks read: (section, field) -> those tasks. A value other than the default is refused
# for the other tasks, so a recipe never sets an option that silently does nothing.
_TASK_FIELDS = {
    ("data", "target_column"): ("seq2seq",),
    ("data", "label_words"): ("seq2seq",),
    ("data", "max_target_length"): ("seq2seq",),
    ("data", "prompt_column"): ("causal-lm",),
    ("data", "response_column"): ("causal-lm",),
    ("data", "messages_column"): ("causal-lm",),
    ("data", "chat_template"): ("causal-lm",),
    ("data", "packing"): ("causal-lm",),
    ("training", "max_new_tokens"): GENERATIVE_TASKS,
    ("data", "text_pair_column"): ("classification",),
    ("data", "k_shot"): ("classification",),
    ("data", "augment"): ("classification",),
    ("data", "source_file"): ("classification",),
    ("data", "replay_ratio"): ("classification",),
    ("training", "ewc_lambda"): ("classification",),
    ("training", "l2sp_lambda"): ("classification",),
    ("training", "gradual_unfreezing"): ("classification",),
    ("training", "layerwise_lr_decay"): ("classification",),
}


# ---------------------------------------------------------------- validation


def check_task(config: RunConfig) -> None:
    """Refuse task-specific fields set for another task, and what the generative tasks cannot run."""
    defaults = RunConfig()
    for (section, name), tasks in _TASK_FIELDS.items():
        value = getattr(getattr(config, section), name)
        if config.task not in tasks and value != getattr(getattr(defaults, section), name):
            raise ConfigError(
                f"{section}.{name}: {value!r} applies to task {' / '.join(tasks)}, not {config.task!r}; "
                "remove it or change task"
            )
    if config.task in GENERATIVE_TASKS:
        _check_generative(config)


def _check_generative(config: RunConfig) -> None:
    from peftkit.strategies import BACKBONE_METHODS

    a, d, t = config.adapter, config.data, config.training
    if a.method in BACKBONE_METHODS:
        raise ConfigError(
            f"adapter.method: {a.method!r} is for classification; task {config.task!r} trains a peft adapter "
            "(lora, qlora, bottleneck, prefix, ia3, prompt)"
        )
    if t.metric_for_best == "macro_f1":
        raise ConfigError(
            "training.metric_for_best: macro_f1 is a classification metric; use accuracy or loss"
        )
    if d.max_target_length <= 0:
        raise ConfigError(f"data.max_target_length: {d.max_target_length} must be > 0")
    if t.max_new_tokens <= 0:
        raise ConfigError(f"training.max_new_tokens: {t.max_new_tokens} must be > 0")
    if d.label_words is not None and (d.target_column or len(set(d.label_words)) != len(d.label_words)):
        raise ConfigError(
            f"data.label_words: {d.label_words} must be distinct words, and is for classification as "
            "generation only (no data.target_column)"
        )
    if d.chat_template != "auto" and d.chat_template not in TEMPLATES:
        raise ConfigError(
            f"data.chat_template: {d.chat_template!r} is not 'auto' or one of {', '.join(TEMPLATES)}"
        )
    if d.packing and a.method in ("prefix", "prompt"):
        raise ConfigError(
            f"data.packing cannot be used with adapter.method: {a.method}: the virtual tokens sit before the "
            "whole packed row, so peft ignores the per-example position ids; set data.packing=false"
        )


# ---------------------------------------------------------------- data


@dataclass
class GenerativeData:
    rows: dict[str, list[dict]]
    """Split -> tokenized rows (`input_ids`, `labels` with -100 on what is not trained, and for seq2seq
    `attention_mask`)."""
    generation: dict[str, GenerationSet]
    """Evaluated splits (`validation`, `test`) -> prompts and references for evaluation by generation."""
    labels: list[str]
    """Classification as generation: the label words, in class order; else empty."""


def load_generative_data(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> GenerativeData:
    """Read, check and tokenize the splits for `config.task`; raises DataError before any model loads."""
    if config.task == "causal-lm":
        return _chat_data(config.data, config.training.seed, tokenizer)
    return _seq2seq_data(config.data, config.training.seed, tokenizer)


def _seq2seq_data(d: DataConfig, seed: int, tokenizer) -> GenerativeData:
    if d.target_column:
        train, validation, test = read_splits(d, seed, [d.text_column, d.target_column])
        splits = {"train": train, "validation": validation} | ({"test": test} if test is not None else {})
        targets = {name: [str(v) for v in split[d.target_column]] for name, split in splits.items()}
        words: list[str] = []
    else:  # classification as generation: the class word is the target
        raw = load_raw_splits(d, seed)
        splits = {"train": raw.train, "validation": raw.validation} | (
            {"test": raw.test} if raw.test is not None else {}
        )
        words = label_words(raw.labels, d.label_words)
        targets = {name: _words_of(split, raw.labels, words, d) for name, split in splits.items()}
    rows, generation = {}, {}
    for name, split in splits.items():
        sources = tokenizer(list(split[d.text_column]), truncation=True, max_length=d.max_length)
        labels = tokenizer(text_target=targets[name], truncation=True, max_length=d.max_target_length)
        rows[name] = [
            {"input_ids": ids, "attention_mask": mask, "labels": target}
            for ids, mask, target in zip(
                sources["input_ids"], sources["attention_mask"], labels["input_ids"], strict=True
            )
        ]
        generation[name] = GenerationSet(prompts=list(sources["input_ids"]), references=targets[name])
    return GenerativeData(rows=rows, generation=_evaluated(generation), labels=words)


def label_words(labels: list[str], words: list[str] | None) -> list[str]:
    """The word generated for each class: `data.label_words` (one per label, in order) or the label names."""
    if words is None:
        return list(labels)
    if len(words) != len(labels):
        raise DataError(
            f"data.label_words has {len(words)} words but the data has {len(labels)} labels {labels}"
        )
    return list(words)


def _words_of(split, labels: list[str], words: list[str], d: DataConfig) -> list[str]:
    index = {name: i for i, name in enumerate(labels)}
    names = d.label_names
    keys = [names[v] if names and isinstance(v, int) else str(v) for v in split[d.label_column]]
    return [words[index[key]] for key in keys]


def _chat_data(d: DataConfig, seed: int, tokenizer) -> GenerativeData:
    columns = [d.messages_column] if d.messages_column else [d.prompt_column, d.response_column]
    train, validation, test = read_splits(d, seed, columns)
    splits = {"train": train, "validation": validation} | ({"test": test} if test is not None else {})
    template = use_chat_template(tokenizer, d.chat_template)
    logger.info("causal-lm: chat template %r", template)
    rows, generation = {}, {}
    for name, split in splits.items():
        conversations = _conversations(split, d)
        try:
            rendered = [render_chat(tokenizer, messages) for messages in conversations]
            prompts = [generation_prompt(tokenizer, messages) for messages in conversations]
        except TemplateError as err:
            raise DataError(f"{name} split: {err}") from None
        rows[name] = _truncated(name, rendered, d.max_length)
        generation[name] = GenerationSet(
            prompts=[ids[-d.max_length :] for ids, _ in prompts], references=[ref for _, ref in prompts]
        )
    return GenerativeData(rows=rows, generation=_evaluated(generation), labels=[])


def _conversations(split, d: DataConfig) -> list[list[dict]]:
    if d.messages_column:
        return [list(messages) for messages in split[d.messages_column]]
    pairs = zip(split[d.prompt_column], split[d.response_column], strict=True)
    return [prompt_response_messages(str(p), str(r)) for p, r in pairs]


def _truncated(name: str, rendered, max_length: int) -> list[dict]:
    """Rows cut to `max_length` tokens; rows left with no trained token are dropped (counted, refused if all)."""
    rows = []
    for chat in rendered:
        labels = chat.labels[:max_length]
        if any(label != IGNORE_INDEX for label in labels):
            rows.append({"input_ids": chat.input_ids[:max_length], "labels": labels})
    dropped = len(rendered) - len(rows)
    if dropped == len(rendered):
        raise DataError(f"{name} split: every prompt is longer than data.max_length={max_length} tokens")
    if dropped:
        logger.warning(
            "%s split: %d of %d examples dropped: their prompt fills data.max_length=%d tokens (raise it)",
            name, dropped, len(rendered), max_length,
        )  # fmt: skip
    return rows


def _evaluated(generation: dict[str, GenerationSet]) -> dict[str, GenerationSet]:
    return {name: value for name, value in generation.items() if name != "train"}


def collator(tokenizer: PreTrainedTokenizerBase, packing: bool, pad_to_multiple_of: int | None = None):
    """Pad inputs and labels (-100) per batch, or (`packing`) flatten the batch into one row."""
    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    return DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
    )


def without_cache(model) -> None:
    """Build no key/value cache in forward passes (generation still uses one: `generation_config.use_cache`).

    Training needs none, and packing must not have one: transformers 5.24 reads restarting position ids
    as example boundaries only when no cache is passed; with LLaMA's default `use_cache=True` a packed row
    silently becomes one long sequence whose examples attend to each other.
    """
    model.config.use_cache = False


# ---------------------------------------------------------------- the run


def finetune_generative(config: RunConfig):
    """`api.finetune` for `task: seq2seq` and `causal-lm`: same stages, evaluated by generation."""
    from peftkit.adapters import apply_adapter, count_parameters
    from peftkit.api import FinetuneResult, _save_outputs, _train_metrics
    from peftkit.checkpoint import Checkpoints
    from peftkit.data import make_dataloader
    from peftkit.model import load_generative_model, load_tokenizer
    from peftkit.train import (
        MetricsLog,
        check_launch,
        enable_gradient_checkpointing,
        prepare_for_training,
        resolve_mixed_precision,
        train_loop,
        use_cpu_backend,
    )

    t, d = config.training, config.data
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(t.mixed_precision),
        cpu=use_cpu_backend(),
    )
    check_launch(accelerator)
    checkpoints = Checkpoints.for_run(config, accelerator)
    set_seed(t.seed)
    tokenizer = load_tokenizer(config.model)
    tokenizer.padding_side = "right"  # training batches; generation pads on the left itself
    data = load_generative_data(config, tokenizer)
    loaded = load_generative_model(config.model, config.task, tokenizer, config.adapter)
    without_cache(loaded.model)
    model = apply_adapter(loaded.model, config.adapter, loaded.family, task=config.task)
    if t.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    pad_multiple = 8 if accelerator.device.type == "cuda" else None

    def loader(name: str, batch_size: int, shuffle: bool, packing: bool = False):
        return make_dataloader(
            data.rows[name], tokenizer, batch_size, shuffle=shuffle, group_by_length=t.group_by_length,
            seed=t.seed, collate_fn=collator(tokenizer, packing, pad_multiple),
        )  # fmt: skip

    train_dl = loader("train", t.batch_size, shuffle=True, packing=d.packing)
    eval_dl = loader("validation", t.eval_batch_size, shuffle=False)
    model, optimizer, scheduler, train_dl, eval_dl = prepare_for_training(
        accelerator, model, train_dl, eval_dl, t, config.adapter.loraplus_lr_ratio
    )

    def evaluate_split(name: str, dataloader) -> dict:
        return evaluate_generative(
            model,
            dataloader,
            data.generation[name],
            tokenizer,
            accelerator,
            t.eval_batch_size,
            t.max_new_tokens,
        )

    resume_step = checkpoints.resume_step if checkpoints else None
    log = MetricsLog(
        Path(t.output_dir) / "metrics.jsonl" if accelerator.is_main_process else None, resume_step
    )
    result = train_loop(
        model, train_dl, t, accelerator, evaluate_fn=lambda: evaluate_split("validation", eval_dl), log=log,
        checkpoints=checkpoints, optimizer=optimizer, scheduler=scheduler,
    )  # fmt: skip
    last = result.evaluations[-1] if result.evaluations else None
    validation = (
        last["eval"] if last and last["step"] == result.steps else evaluate_split("validation", eval_dl)
    )
    metrics = {"validation": validation, "train": _train_metrics(result)}
    if "test" in data.rows:
        metrics["test"] = evaluate_split(
            "test", accelerator.prepare(loader("test", t.eval_batch_size, False))
        )
    trainable, total = count_parameters(model)
    metrics["parameters"] = {"trainable": trainable, "total": total}
    adapter_dir = _save_outputs(accelerator, model, loaded.model, tokenizer, config, data.labels, metrics)
    logger.info("validation: %s", {k: round(v, 4) for k, v in validation.items()})
    return FinetuneResult(
        output_dir=Path(t.output_dir), adapter_dir=adapter_dir, labels=data.labels, metrics=metrics,
        model=accelerator.unwrap_model(model).eval(), tokenizer=tokenizer,
    )  # fmt: skip
