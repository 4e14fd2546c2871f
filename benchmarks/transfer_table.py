"""Benchmark: transfer-learning strategies on one SST-2 subset: full fine-tuning, LoRA, feature extraction,
gradual unfreezing and layer-wise learning-rate decay.

Every strategy trains on the same SST-2 sentences (seeded shuffle, first N rows) for the same number of
epochs and batch size, and is scored once on SST-2 dev. Feature extraction trains only a linear head on
mean-pooled features cached once, so it also gets a row with 10x the epochs (an epoch of it costs a linear
layer). Full fine-tuning and its two variants share one learning rate (1e-4); LoRA and the head use theirs. With `--repeats` > 1 the strategies alternate
(full, lora, ..., full, lora, ...) and the table gives median train seconds. Train seconds are the loop's
(for features: training the head; the one-off extraction is in the wall seconds, with loading and scoring).

    python benchmarks/transfer_table.py --sst2 ../shared/data/sst2 --train-size 4000 --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from common import command_line, header, run_finetune, sst2_config, table_head, write_record
from methods_table import HERE, environment

FULL = {"adapter.method": "full", "training.learning_rate": 1e-4}
STRATEGIES = {
    "full": FULL,
    "lora": {"adapter.method": "lora", "training.learning_rate": 1e-3},
    "features": {
        "adapter.method": "features", "model.pooling": "mean", "training.learning_rate": 1e-2,
        "training.warmup_ratio": 0.0, "training.feature_cache": "memory",
    },
    "features-10x-epochs": {},  # features, with --epochs x 10 (set in `overrides`)
    "gradual_unfreezing": FULL | {"training.learning_rate": 1e-4, "training.gradual_unfreezing": True},
    "layerwise_decay": FULL | {"training.learning_rate": 1e-4, "training.layerwise_lr_decay": 0.8},
}  # fmt: skip
"""strategy -> overrides of the shared SST-2 recipe (`common.sst2_config`)."""


def overrides(strategy: str, args) -> list[str]:
    values = dict(STRATEGIES[strategy]) or dict(STRATEGIES["features"])
    epochs = args.epochs * (10 if strategy == "features-10x-epochs" else 1)
    values["training.num_epochs"] = epochs
    if strategy == "gradual_unfreezing":  # every layer group (8 on MiniLM) unfrozen by 70% of the run
        steps = epochs * -(-args.train_size // 32)
        values["training.unfreeze_every_steps"] = max(1, int(0.7 * steps) // 8)
    return [f"{k}={v}" for k, v in values.items()]


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = header(
        record,
        f"Transfer strategies on {s['model']} / SST-2 ({s['train_size']} training sentences, "
        f"batch 32, scored on SST-2 dev)",
    )
    lines += table_head(
        "strategy",
        "epochs",
        "lr",
        "trainable params",
        "% of the model",
        "train s (median)",
        "wall s",
        "dev accuracy",
    )
    totals = {name: runs[0]["total_params"] for name, runs in record["runs"].items()}
    model_params = totals.get("full", max(totals.values()))  # features: the head only; LoRA: + the adapter
    for name, runs in record["runs"].items():
        r = runs[0]
        train_s = statistics.median(x["train_seconds"] for x in runs)
        lines.append(
            f"| {name} | {r['epochs']:g} | {r['learning_rate']:g} | {r['trainable_params']:,} "
            f"| {100 * r['trainable_params'] / model_params:.2f} | {train_s:.1f} "
            f"| {statistics.median(x['wall_seconds'] for x in runs):.1f} "
            f"| {statistics.median(x['dev_accuracy'] for x in runs):.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternated runs per strategy (median times)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--output", default=str(HERE / "results" / "transfer_table_cpu"))
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choices: {', '.join(STRATEGIES)}")
    settings = {k: getattr(args, k) for k in ("sst2", "model", "train_size", "epochs", "repeats")}
    record = {"environment": environment(), "command": command_line(), "settings": settings, "runs": {}}
    for repeat in range(args.repeats):
        for strategy in strategies:
            with tempfile.TemporaryDirectory() as out:
                values = sst2_config(args.sst2, args.model, args.train_size, out)
                options = overrides(strategy, args)
                run = run_finetune(values, options) | {"repeat": repeat, "overrides": options}
            run["epochs"] = float(next(o for o in options if "num_epochs" in o).split("=")[1])
            run["learning_rate"] = float(next(o for o in options if "learning_rate" in o).split("=")[1])
            record["runs"].setdefault(strategy, []).append(run)
            print(f"[{strategy} #{repeat}] {run}", flush=True)
            write_record(args.output, record, markdown(record))
    print("\n" + markdown(record))


if __name__ == "__main__":
    main()
