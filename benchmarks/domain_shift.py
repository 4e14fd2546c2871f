"""Benchmark: domain adaptation from SST-2 (movie reviews) to CR (product reviews), MiniLM + LoRA.

Every run is scored on CR test. The rows, each the shipped recipe in `recipes/domain/` (so the settings are
the shipped ones), on the same data and budget (4,000 SST-2 sentences, one epoch, LoRA r=8, lr 1e-3):

- `source_only`: SST-2 only (the lower bound);
- `target_supervised`: the CR training labels instead (the upper bound; `--target-size` of them, default all
  3,017, a tenth carved off for validation);
- `dapt`, `dapt_stack`, `self_training`, `dann`, `coral`, `mmd`: SST-2 labels plus the CR training text
  *without* labels (`dapt_stack`: the domain adapter kept frozen under the task adapter instead of merged);
- `target_small` and `intermediate`: 200 labelled CR sentences alone, and after an SST-2 stage.

"gap closed" is (accuracy - source_only) / (target_supervised - source_only). Each run is its own
subprocess; results are appended as they finish, so a partial run still leaves a record.

    python benchmarks/domain_shift.py --sst2 ../shared/data/sst2 --cr ../shared/data/cr
    python benchmarks/domain_shift.py --sst2 ../shared/data/sst2 --cr ../shared/data/cr --runs source_only,dann
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import table_head

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes" / "domain"
RUNS = {
    "source_only": ("source_only_minilm_sst2_cr.yaml", []),
    "target_supervised": ("source_only_minilm_sst2_cr.yaml", ["target_labels"]),
    "dapt": ("dapt_minilm_sst2_cr.yaml", []),
    "dapt_stack": ("dapt_stack_minilm_sst2_cr.yaml", []),
    "self_training": ("self_training_minilm_sst2_cr.yaml", []),
    "dann": ("dann_minilm_sst2_cr.yaml", []),
    "coral": ("coral_minilm_sst2_cr.yaml", []),
    "mmd": ("mmd_minilm_sst2_cr.yaml", []),
    "target_small": ("intermediate_minilm_cr.yaml", ["no_domain"]),
    "intermediate": ("intermediate_minilm_cr.yaml", []),
}
"""Run name -> (recipe, changes to it)."""


def overrides(name: str, args, out_dir: str) -> list[str]:
    """--set style overrides that point `name`'s recipe at the data, the model and the budget of this run."""
    _, changes = RUNS[name]
    sst2, cr = Path(args.sst2), Path(args.cr)
    items = [
        f"training.output_dir={out_dir}",
        "training.progress_bar=false",
        "export.save_adapter=false",
        f"data.test_file={cr / 'test.tsv'}",
        *([f"model.name_or_path={args.model}"] if args.model else []),
    ]
    if name in ("target_small", "intermediate"):
        items += [f"data.train_file={cr / 'train.tsv'}", f"data.max_train_samples={args.target_small}"]
        items += [
            f"domain.intermediate_file={sst2 / 'train.tsv'}",
            f"domain.intermediate_max_samples={args.train_size}",
        ]
    else:
        items += [f"data.train_file={sst2 / 'train.tsv'}", f"data.validation_file={sst2 / 'dev.tsv'}"]
        items += [f"data.max_train_samples={args.train_size}"]
        if name not in ("source_only", "target_supervised"):
            items.append(f"domain.target_file={cr / 'train.tsv'}")
    if "target_labels" in changes:  # CR labels, validation carved from them (no SST-2 at all)
        items += [
            f"data.train_file={cr / 'train.tsv'}",
            "data.validation_file=null",
            f"data.max_train_samples={args.target_size or 'null'}",
        ]
    if "no_domain" in changes:
        items.append("domain.method=none")
    if name in ("dapt", "dapt_stack") and args.pretrain_steps:
        items.append(f"domain.pretrain_steps={args.pretrain_steps}")
    return items + list(args.set or [])


# ---------------------------------------------------------------- one run (child process)


def run_one(name: str, args) -> dict:
    from peftkit.api import finetune
    from peftkit.config import load_recipe

    with tempfile.TemporaryDirectory() as out_dir:
        config = load_recipe(RECIPES / RUNS[name][0], overrides(name, args, out_dir))
        started = time.perf_counter()
        result = finetune(config)
        seconds = time.perf_counter() - started
    m = result.metrics
    return {
        "run": name,
        "recipe": f"recipes/domain/{RUNS[name][0]}",
        "overrides": [o for o in overrides(name, args, "OUT") if not o.startswith(("training.", "export."))],
        "domain": config.domain.__dict__ | {"report": _jsonable(m.get("domain"))},
        "cr_test_accuracy": m["test"]["accuracy"],
        "cr_test_macro_f1": m["test"]["macro_f1"],
        "validation_accuracy": m["validation"]["accuracy"],
        "train_samples": m["train"]["samples"],
        "train_steps": m["train"]["steps"],
        "wall_seconds": seconds,
    }


def _jsonable(value):
    return json.loads(json.dumps(value, default=str)) if value is not None else None


# ---------------------------------------------------------------- the table (parent process)


def environment() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": __import__("os").cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "commit": commit.stdout.strip() or None,
        "command": " ".join(["python", "benchmarks/domain_shift.py", *sys.argv[1:]]),
    }


def gap_closed(runs: list[dict]) -> None:
    """Add `gap_closed` (share of the source-only -> target-supervised gap) to each run."""
    by_name = {r["run"]: r["cr_test_accuracy"] for r in runs}
    low, high = by_name.get("source_only"), by_name.get("target_supervised")
    for run in runs:
        if low is not None and high is not None and high != low:
            run["gap_closed"] = (run["cr_test_accuracy"] - low) / (high - low)


def markdown(record: dict) -> str:
    env, s = record["environment"], record["settings"]
    lines = [
        "# Domain shift: SST-2 (movie reviews) -> CR (product reviews), MiniLM + LoRA",
        "",
        f"{env['date']}, {env['machine']} ({env['cpus']} CPUs), torch {env['torch']}, transformers "
        f"{env['transformers']}, peft {env['peft']}, "
        + (
            f"commits {', '.join(env['commits'])} (merged records)."
            if "commits" in env
            else f"commit {env['commit']}."
        ),
        f"Command: `{env['command']}`",
        f"Budget: {s['train_size']} SST-2 sentences, 1 epoch (per recipe); CR test has {s['cr_test']} sentences.",
        "",
        *table_head(
            "run",
            "CR test accuracy",
            "CR test macro-F1",
            "gap closed",
            "validation accuracy",
            "train samples",
            "wall s",
        ),
    ]
    for r in record["runs"]:
        gap = f"{100 * r['gap_closed']:.0f}%" if "gap_closed" in r else "-"
        lines.append(
            f"| {r['run']} | {r['cr_test_accuracy']:.4f} | {r['cr_test_macro_f1']:.4f} | {gap} | "
            f"{r['validation_accuracy']:.4f} | {r['train_samples']} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def run_child(name: str) -> dict:
    """`name` run in its own process (its own peak memory; a crash loses only that run)."""
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "run.json"
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--child-output", str(child)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"run": name, "error": proc.stderr[-3000:]}
        return json.loads(child.read_text())


def merge(paths: list[str], output: Path) -> None:
    """One record from several invocations' JSON (runs split over processes run side by side), in RUNS order."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    runs = {r["run"]: r for record in records for r in record["runs"] if "error" not in r}
    done = [runs[name] for name in RUNS if name in runs]
    gap_closed(done)
    environment = records[0]["environment"] | {
        "date": " / ".join(sorted({r["environment"]["date"] for r in records})),
        "command": " & ".join(r["environment"]["command"] for r in records),  # run side by side
        "commits": sorted(
            {c for r in records for c in r["environment"].get("commits", [r["environment"]["commit"]])}
        ),
    }
    record = {
        "environment": environment,
        "settings": records[0]["settings"] | {"runs": list(runs)},
        "runs": done,
    }
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(record))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--merge", nargs="+", help="only merge these result JSONs into --output")
    parser.add_argument("--sst2", help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--cr", help="folder with CR train.tsv and test.tsv")
    parser.add_argument(
        "--model", default=None, help="model instead of the recipes' MiniLM (tests: a tiny one)"
    )
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--train-size", type=int, default=4000, help="SST-2 training sentences")
    parser.add_argument(
        "--target-size", type=int, default=None, help="target_supervised: CR rows (default all)"
    )
    parser.add_argument("--target-small", type=int, default=200, help="labelled CR sentences of target_small")
    parser.add_argument(
        "--pretrain-steps", type=int, default=None, help="dapt, dapt_stack: instead of the recipe's"
    )
    parser.add_argument("--set", action="append", help="extra override for every run (section.field=value)")
    parser.add_argument(
        "--output", default=str(HERE / "results" / "domain_shift_cpu"), help="path without suffix"
    )
    parser.add_argument("--in-process", action="store_true", help="all runs in this process (quick checks)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, Path(args.output))
        return
    if args.child:
        Path(args.child_output).write_text(json.dumps(run_one(args.child, args)))
        return
    if not args.sst2 or not args.cr:
        parser.error("--sst2 and --cr are required (the data folders)")
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {"train_size": args.train_size, "target_small": args.target_small, "runs": names}
    settings["cr_test"] = sum(1 for _ in open(Path(args.cr) / "test.tsv")) - 1
    record = {"environment": environment(), "settings": settings, "runs": []}
    for name in names:
        run = run_one(name, args) if args.in_process else run_child(name)
        record["runs"].append(run)
        if "error" in run:
            print(f"{name}: failed\n{run['error']}", file=sys.stderr)
        else:
            accuracy, seconds = run["cr_test_accuracy"], run["wall_seconds"]
            print(f"{name}: CR test accuracy {accuracy:.4f} ({seconds:.0f} s)", flush=True)
        done = [r for r in record["runs"] if "error" not in r]
        gap_closed(done)
        output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        output.with_suffix(".md").write_text(markdown({**record, "runs": done}))
    print(output.with_suffix(".md").read_text())
    if any("error" in r for r in record["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
