"""Benchmark: peftkit vs a plain transformers `Trainer` + peft, same fine-tune, same process tree.

Both systems fine-tune MiniLM (the bundled all-MiniLM-L6-v2) with the same LoRA
(r=8, alpha=16, dropout 0.1 on query/key/value/dense), the same SST-2 training
subset (seeded shuffle, first N rows), learning rate, batch size, epochs and
seed. The baseline is what a user writes from the transformers tutorials
(`DataCollatorWithPadding`, the Trainer's defaults otherwise); `trainer-tuned`
adds length grouping (`train_sampling_strategy="group_by_length"`). Each run is its own subprocess; runs alternate
between systems, and the table reports medians and the ratio against the
Trainer measured in the same invocation.

    python benchmarks/trainer_vs_peftkit.py --sst2 ../shared/data/sst2 --train-size 4000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}


def run_trainer(args, out_dir: str, tuned: bool) -> dict:
    import numpy as np
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from peftkit.model import resolve_model_path

    path = resolve_model_path(args.model)
    files = {"train": f"{args.sst2}/train.tsv", "validation": f"{args.sst2}/dev.tsv"}
    data = load_dataset("csv", data_files=files, delimiter="\t", quoting=3)
    data["train"] = data["train"].shuffle(seed=args.seed).select(range(args.train_size))
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=128), batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **LORA))

    def accuracy(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}

    training_args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        warmup_steps=0.06,  # transformers 5: a float below 1 is a ratio
        weight_decay=0.01,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        train_sampling_strategy="group_by_length" if tuned else "random",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()
    return {
        "train_samples_per_second": train_metrics["train_samples_per_second"],
        "train_seconds": train_metrics["train_runtime"],
        "dev_accuracy": eval_metrics["eval_accuracy"],
    }


def run_peftkit(args, out_dir: str) -> dict:
    from peftkit.api import finetune

    result = finetune(
        {
            "model": {"name_or_path": args.model},
            "adapter": {"method": "lora", **LORA},
            "data": {
                "train_file": f"{args.sst2}/train.tsv",
                "validation_file": f"{args.sst2}/dev.tsv",
                "text_column": "sentence",
                "label_names": ["negative", "positive"],
                "max_train_samples": args.train_size,
                "max_length": 128,
            },
            "training": {
                "output_dir": out_dir,
                "num_epochs": args.epochs,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": 0.06,
                "weight_decay": 0.01,
                "seed": args.seed,
                "progress_bar": False,
            },
        }
    )
    return {
        "train_samples_per_second": result.metrics["train"]["samples_per_second"],
        "train_seconds": result.metrics["train"]["seconds"],
        "dev_accuracy": result.metrics["validation"]["accuracy"],
    }


def child(args) -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        if args.system == "peftkit":
            result = run_peftkit(args, out_dir)
        else:
            result = run_trainer(args, out_dir, tuned=args.system == "trainer-tuned")
        result["wall_seconds"] = time.perf_counter() - started
    import resource

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args, system: str) -> dict:
    cmd = [sys.executable, __file__, "--child", system] + _shared_flags(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{system} run failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _shared_flags(args) -> list[str]:
    return [
        "--sst2", args.sst2, "--model", args.model, "--train-size", str(args.train_size),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--learning-rate", str(args.learning_rate), "--seed", str(args.seed),
    ]  # fmt: skip


def environment() -> dict:
    import peft
    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        )
        commit = commit.stdout.strip() or None
    except OSError:
        commit = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2, help="runs per system, alternated")
    parser.add_argument(
        "--systems", default="trainer,peftkit", help="comma list of trainer, trainer-tuned, peftkit"
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.system = args.child
        child(args)
        return
    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for repeat in range(args.repeats):
        for system in systems:
            result = spawn(args, system)
            runs[system].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {system:14s} {json.dumps(result)}", flush=True)
    summary = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    base = summary.get("trainer")
    print(
        f"\n{'system':14s} {'samples/s':>10s} {'ratio':>6s} {'dev acc':>8s} {'wall s':>7s} {'peak RSS MB':>11s}"
    )
    for system, m in summary.items():
        ratio = m["train_samples_per_second"] / base["train_samples_per_second"] if base else float("nan")
        m["ratio_vs_trainer"] = ratio
        print(
            f"{system:14s} {m['train_samples_per_second']:10.1f} {ratio:6.2f} {m['dev_accuracy']:8.4f} "
            f"{m['wall_seconds']:7.1f} {m['peak_rss_mb']:11.0f}"
        )
    record = {
        "environment": environment(),
        "settings": vars(args) | {"child": None},
        "runs": runs,
        "median": summary,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
