"""Benchmark: training a linear head on cached features vs running the frozen backbone every epoch.

Both train the same `LinearHead` with AdamW on the same pooled features; the baseline
recomputes them with the backbone in each epoch (what a frozen-backbone run without a cache
does), the cached run computes them once and then trains on the cache. Epochs alternate
(backbone, cached, backbone, ...) after a warm-up; the table reports the median seconds per
epoch and the ratio. The one-off extraction time is printed too (the cache pays for itself
after about one epoch).

    python benchmarks/feature_cache.py --tiny --epochs 5                        # tiny BERT, toy data
    python benchmarks/feature_cache.py --train-file ../shared/data/sst2/train.tsv --text-column sentence \
        --rows 2000 --epochs 5                                                  # MiniLM on SST-2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def load(args):
    from peftkit.config import DataConfig, ModelConfig
    from peftkit.data import load_raw_splits, tokenize
    from peftkit.model import load_model, load_tokenizer

    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import conftest
        import tiny

        root = Path(tempfile.mkdtemp())
        args.model = str(tiny.save_tiny_model("bert", root / "bert"))
        args.train_file = str(conftest.write_csv(root / "train.csv", tiny.toy_sentiment(args.rows, seed=1)))
    model_config = ModelConfig(name_or_path=args.model)
    tokenizer = load_tokenizer(model_config)
    data = DataConfig(train_file=args.train_file, max_length=args.max_length, text_column=args.text_column)
    raw = load_raw_splits(data, seed=0)
    rows = tokenize(raw.train, tokenizer, raw.labels, data)[: args.rows]
    model = load_model(model_config, raw.labels, tokenizer).model.requires_grad_(False).eval()
    return model, tokenizer, rows, len(raw.labels)


def train_head_epoch(head, optimizer, features, labels, batch_size):
    for start in range(0, len(labels), batch_size):
        loss = head(features[start : start + batch_size], labels[start : start + batch_size]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT and toy data (no downloads)")
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--train-file")
    parser.add_argument("--text-column", default="text", help="`sentence` for SST-2's train.tsv")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    if not args.tiny and not args.train_file:
        parser.error("give --train-file (or --tiny)")
    from peftkit.strategies.features import LinearHead, extract_features

    model, tokenizer, rows, num_labels = load(args)
    labels = torch.tensor([r["labels"] for r in rows])
    started = time.perf_counter()
    cache = extract_features(model, rows, tokenizer, "mean", args.batch_size)
    extraction = time.perf_counter() - started
    head = LinearHead(cache.shape[1], num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    times = {"backbone": [], "cached": []}
    for epoch in range(args.epochs + 1):  # epoch 0 is a warm-up, not counted
        for system in times:
            started = time.perf_counter()
            features = (
                extract_features(model, rows, tokenizer, "mean", args.batch_size)
                if system == "backbone"
                else cache
            )
            train_head_epoch(head, optimizer, features, labels, args.batch_size)
            if epoch:
                times[system].append(time.perf_counter() - started)
    backbone, cached = (statistics.median(times[s]) for s in ("backbone", "cached"))
    print(f"model {args.model}, {len(rows)} rows, batch {args.batch_size}, {args.epochs} epochs (medians)")
    print(f"one-off feature extraction: {extraction:.4f} s")
    print(f"{'system':<10} {'s/epoch':>10}")
    print(f"{'backbone':<10} {backbone:>10.4f}")
    print(f"{'cached':<10} {cached:>10.4f}")
    print(f"speed-up per epoch: {backbone / cached:.1f}x")


if __name__ == "__main__":
    main()
