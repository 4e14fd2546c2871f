"""Helpers shared by the benchmark scripts (imported as a sibling: run the scripts by path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where a script needs it: the table-writing parents stay light
    import torch


def fixed_batches(
    model: torch.nn.Module, batch_size: int, seq_len: int, steps: int, seed: int = 0
) -> list[dict]:
    """`steps` classification batches of random token ids, all `batch_size` x `seq_len`, two labels."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    return [
        {
            "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=generator),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator),
        }
        for _ in range(steps)
    ]


# ---------------------------------------------------------------- transfer-learning benchmarks

NO_MID_EVAL = 10**9
"""`training.eval_every_steps` that never falls due: the run is scored once, at its end."""


def sst2_config(sst2: str, model: str, train_size: int | None, output_dir: str, **training) -> dict:
    """A recipe dict for a MiniLM-style classifier on SST-2 (`sst2/train.tsv`, scored on `sst2/dev.tsv`)."""
    return {
        "model": {"name_or_path": model},
        "adapter": {"method": "lora"},
        "data": {
            "train_file": f"{sst2}/train.tsv",
            "validation_file": f"{sst2}/dev.tsv",
            "text_column": "sentence",
            "label_names": ["negative", "positive"],
            "max_train_samples": train_size,
        },
        "training": {
            "output_dir": output_dir,
            "batch_size": 32,
            "warmup_ratio": 0.1,
            "eval_every_steps": NO_MID_EVAL,
            "progress_bar": False,
            "seed": 42,
            **training,
        },
        "export": {"save_adapter": False},
    }


def run_finetune(values: dict, overrides: list[str] = ()) -> dict:
    """`api.finetune` on a recipe dict plus dotted overrides; the numbers a benchmark table needs."""
    import time

    from peftkit.api import finetune

    started = time.perf_counter()
    result = finetune(values, list(overrides))
    metrics = result.metrics
    return {
        "trainable_params": metrics["parameters"]["trainable"],
        "total_params": metrics["parameters"]["total"],
        "train_samples": metrics["train"]["samples"],
        "train_seconds": metrics["train"]["seconds"],
        "wall_seconds": time.perf_counter() - started,
        "dev_accuracy": metrics["validation"]["accuracy"],
        **({"test_accuracy": metrics["test"]["accuracy"]} if "test" in metrics else {}),
    }


def write_record(output: str, record: dict, markdown: str) -> None:
    """`output`.json (the raw record) and `output`.md (the table), written after every run."""
    import json
    from pathlib import Path

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    path.with_name(path.name + ".md").write_text(markdown)


def header(record: dict, title: str) -> list[str]:
    """Markdown lines: title, date, commit, machine, versions and the command that made the table."""
    env = record["environment"]
    return [
        f"# {title}",
        "",
        f"{env['date']}, commit {env['commit']}; {env['machine']}"
        + (f", {env['cuda']}" if env["cuda"] else ""),
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, Python {env['python']}",
        "",
        f"Command: `{record['command']}`",
        "",
    ]


def table_head(*columns: str) -> list[str]:
    """The two Markdown lines that start a table with `columns`."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def command_line() -> str:
    import sys
    from pathlib import Path

    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
