"""Benchmark: catastrophic forgetting of task A (SST-2) after training on task B, and three mitigations.

Task A: SST-2 sentiment (N seeded training sentences), full fine-tuning of MiniLM; its model is saved.
Task B starts from that model and trains on CR product reviews. Plain CR sentiment is the *same* task in a
new domain, so it would hardly show forgetting (it is the `control` row). The measured task B is therefore
CR **complaint detection**: the same sentences, label 1 where the review complains (CR label 0), so the one
two-way head has to map sentiment the other way round. That conflicts with task A directly: without
mitigation, task-A accuracy falls well below chance. Rows:

- `none`: task B alone;  `ewc`: + EWC (Fisher from task-A batches at the task-A weights);
- `l2sp`: + L2-SP towards the task-A weights;  `replay`: 25% of every batch replayed from task A's data;
- `control`: CR sentiment (labels as given), no mitigation.

Task-A accuracy is SST-2 dev (the runs' test split); task-B accuracy is the CR test file (labelled as task B).
Note: peftkit's EWC and L2-SP anchor the backbone, not the classifier head (`strategies/regularizers.py`).

    python benchmarks/forgetting.py --sst2 ../shared/data/sst2 --cr ../shared/data/cr --train-size 4000
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from common import command_line, header, run_finetune, sst2_config, table_head, write_record
from methods_table import HERE, environment

MITIGATIONS = {
    "none": [],
    "ewc": ["training.ewc_lambda={ewc}"],
    "l2sp": ["training.l2sp_lambda={l2sp}"],
    "replay": ["data.replay_ratio={replay}"],
    "control": [],
}


def write_tsv(path: Path, rows: list[tuple[int, str]]) -> Path:
    """GLUE-style TSV (no quoting), as the inputs are."""
    path.write_text("label\tsentence\n" + "".join(f"{label}\t{text}\n" for label, text in rows))
    return path


def read_tsv(path: str) -> list[tuple[int, str]]:
    lines = Path(path).read_text().splitlines()[1:]
    return [(int(label), text) for label, text in (line.split("\t", 1) for line in lines if line.strip())]


def task_files(args, folder: Path) -> dict[str, Path]:
    """Task A's training subset (also the replay / Fisher source), and CR as complaint detection and as is."""
    sst2 = read_tsv(f"{args.sst2}/train.tsv")
    random.Random(args.seed).shuffle(sst2)
    files = {"a_train": write_tsv(folder / "a_train.tsv", sst2[: args.train_size])}
    for split in ("train", "test"):
        cr = read_tsv(f"{args.cr}/{split}.tsv")
        if split == "train" and args.cr_size:
            random.Random(args.seed).shuffle(cr)
            cr = cr[: args.cr_size]
        files[f"complaint_{split}"] = write_tsv(
            folder / f"complaint_{split}.tsv", [(1 - y, t) for y, t in cr]
        )
        files[f"cr_{split}"] = write_tsv(folder / f"cr_{split}.tsv", cr)
    return files


def task_b_overrides(args, files: dict, model_dir: Path, mitigation: str, out: str) -> list[str]:
    task = "cr" if mitigation == "control" else "complaint"
    values = {"ewc": args.ewc_lambda, "l2sp": args.l2sp_lambda, "replay": args.replay_ratio}
    return [
        f"model.name_or_path={model_dir}",
        f"data.train_file={files[task + '_train']}",
        f"data.validation_file={files[task + '_test']}",
        f"data.test_file={args.sst2}/dev.tsv",
        f"data.source_file={files['a_train']}",
        "data.max_train_samples=null",
        f"training.num_epochs={args.epochs_b}",
        f"training.output_dir={out}",
        *[o.format(**values) for o in MITIGATIONS[mitigation]],
    ]


def markdown(record: dict) -> str:
    s, a = record["settings"], record["task_a"]
    lines = header(
        record, "Forgetting: task A (SST-2) after task B (CR complaint detection), MiniLM, full FT"
    )
    lines += [
        f"Task A: {s['train_size']} SST-2 sentences, {s['epochs_a']:g} epochs, lr {s['learning_rate']:g}: "
        f"SST-2 dev accuracy **{a['dev_accuracy']:.4f}**. Task B: {s['cr_size'] or 'all'} CR training reviews ({s['epochs_b']:g} epoch(s), same lr), "
        f"EWC lambda {s['ewc_lambda']:g} (Fisher from {s['ewc_fisher_batches']} batches), L2-SP lambda "
        f"{s['l2sp_lambda']:g}, replay ratio {s['replay_ratio']:g}.",
        "",
        *table_head(
            "task B run",
            "mitigation",
            "task-A accuracy after B (SST-2 dev)",
            "retained vs before",
            "task-B accuracy (CR test)",
        ),
    ]
    for name, r in record["runs"].items():
        task = "CR sentiment (same task)" if name == "control" else "CR complaint detection"
        mitigation = "none" if name == "control" else name
        lines.append(
            f"| {task} | {mitigation} | {r['test_accuracy']:.4f} | {r['test_accuracy'] - a['dev_accuracy']:+.4f} "
            f"| {r['dev_accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--cr", required=True, help="folder with CR train.tsv and test.tsv")
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=4000, help="task-A (SST-2) training sentences")
    parser.add_argument("--cr-size", type=int, help="task-B training reviews (a seeded sample; default: all)")
    parser.add_argument("--epochs-a", type=float, default=2)
    parser.add_argument("--epochs-b", type=float, default=1)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--ewc-lambda", type=float, default=1e4)
    parser.add_argument("--ewc-fisher-batches", type=int, default=32)
    parser.add_argument("--l2sp-lambda", type=float, default=1e-1)
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    parser.add_argument("--mitigations", default=",".join(MITIGATIONS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(HERE / "results" / "forgetting_cpu"))
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    record = {"environment": environment(), "command": command_line(), "settings": settings, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = task_files(args, folder)
        shared = [f"training.learning_rate={args.learning_rate}", f"training.seed={args.seed}"]
        shared += [f"training.ewc_fisher_batches={args.ewc_fisher_batches}", "adapter.method=full"]
        values = sst2_config(args.sst2, args.model, None, str(folder / "a"))
        values["data"]["train_file"] = str(files["a_train"])
        values["export"]["save_adapter"] = True  # task B starts from this model
        record["task_a"] = run_finetune(values, [*shared, f"training.num_epochs={args.epochs_a}"])
        print(f"[task A] {record['task_a']}", flush=True)
        values["export"]["save_adapter"] = False
        for mitigation in args.mitigations.split(","):
            out = str(folder / mitigation)
            options = [*shared, *task_b_overrides(args, files, folder / "a" / "model", mitigation, out)]
            record["runs"][mitigation] = run_finetune(values, options) | {"overrides": options}
            print(f"[{mitigation}] {record['runs'][mitigation]}", flush=True)
            write_record(args.output, record, markdown(record))
    print("\n" + markdown(record))


if __name__ == "__main__":
    main()
