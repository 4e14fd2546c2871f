"""Benchmark: a k-shot learning curve on SST-2 for feature extraction and LoRA.

For each k (examples per class) and seed, `data.k_shot` draws k positive and k negative SST-2 training
sentences with that seed; the model trains on them and is scored on SST-2 dev. Feature extraction: a
linear head on mean-pooled MiniLM features, 50 epochs, lr 1e-2 (the dev features are cached on disk once
and shared by every run). LoRA (r 8): batch 8, `--lora-epochs` (20) epochs, lr 2e-3, warmup 10%
(`recipes/transfer/fewshot_minilm_tickets.yaml` without augmentation). The table gives the mean and the
min-max over seeds.

    python benchmarks/kshot_curve.py --sst2 ../shared/data/sst2 --ks 8,16,32,64 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import command_line, header, run_finetune, sst2_config, table_head, write_record
from methods_table import HERE, environment

METHODS = {
    "features": [
        "adapter.method=features", "model.pooling=mean", "training.learning_rate=1e-2",
        "training.num_epochs=50", "training.warmup_ratio=0.0", "training.batch_size=8",
    ],
    "lora": [
        "adapter.method=lora", "adapter.r=8", "training.learning_rate=2e-3", "training.batch_size=8",
    ],
}  # fmt: skip


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = header(record, f"k-shot curve on {s['model']} / SST-2 (scored on SST-2 dev; seeds {s['seeds']})")
    lines += table_head("k per class", *record["curve"])
    for k in s["ks"]:
        cells = []
        for method in record["curve"]:
            accs = record["curve"][method].get(str(k), [])
            cells.append(
                f"{statistics.mean(accs):.4f} ({min(accs):.3f}-{max(accs):.3f})" if accs else "not run"
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean dev accuracy over seeds (min-max)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--ks", default="8,16,32,64")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lora-epochs", type=int, default=20)
    parser.add_argument("--output", default=str(HERE / "results" / "kshot_curve_cpu"))
    args = parser.parse_args()
    ks, seeds = [int(k) for k in args.ks.split(",")], [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    settings = {"sst2": args.sst2, "model": args.model, "ks": ks, "seeds": seeds, "methods": METHODS}
    settings["lora_epochs"] = args.lora_epochs
    record = {"environment": environment(), "command": command_line(), "settings": settings, "runs": []}
    record["curve"] = {m: {} for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # every k and method once per seed: a partial run still has whole curves
            for k in ks:
                for method in methods:
                    out = str(Path(tmp) / method)  # features: the dev-set cache is shared by the runs
                    values = sst2_config(args.sst2, args.model, None, out)
                    options = [*METHODS[method], f"data.k_shot={k}", f"training.seed={seed}"]
                    options += [f"training.num_epochs={args.lora_epochs}"] if method == "lora" else []
                    run = run_finetune(values, options) | {"method": method, "k": k, "seed": seed}
                    record["runs"].append(run)
                    record["curve"][method].setdefault(str(k), []).append(run["dev_accuracy"])
                    print(f"[{method} k={k} seed={seed}] {run['dev_accuracy']:.4f}", flush=True)
                    write_record(args.output, record, markdown(record))
    print("\n" + markdown(record))


if __name__ == "__main__":
    main()
