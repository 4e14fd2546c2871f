"""Benchmark: the overhead of peftkit's training loop over a bare hand-written PyTorch loop.

Same model (MiniLM + LoRA, or a tiny BERT with --tiny), same fixed-shape batches
(random token ids, batch x seq), same optimizer settings. The bare loop is
forward / backward / AdamW step / zero_grad and nothing else; peftkit's loop adds
Accelerate, gradient clipping, the scheduler, loss bookkeeping and logging.
Runs alternate (bare, peftkit, bare, ...) in one process after a warm-up, and
the table reports median seconds per step and the ratio (target: within 3%).

    python benchmarks/loop_overhead.py --steps 30 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import fixed_batches


def build(args):
    from peftkit.adapters import apply_adapter
    from peftkit.config import AdapterConfig, ModelConfig
    from peftkit.model import load_model, load_tokenizer

    model_config = ModelConfig(name_or_path=args.model)
    tokenizer = load_tokenizer(model_config)
    loaded = load_model(model_config, ["negative", "positive"], tokenizer)
    model = apply_adapter(loaded.model, AdapterConfig(lora_dropout=0.0), loaded.family)
    batches = fixed_batches(model, args.batch_size, args.seq_len, args.steps)
    return model, batches


def bare_loop(model, batches, lr: float) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / len(batches)


def peftkit_loop(model, batches, lr: float, **training) -> float:
    """Seconds per step of peftkit's `train_loop` over `batches`; `training`: extra TrainingConfig fields."""
    from accelerate import Accelerator

    from peftkit.config import TrainingConfig
    from peftkit.train import train_loop

    config = TrainingConfig(
        learning_rate=lr, max_steps=len(batches), progress_bar=False, log_every_steps=10, **training
    )
    accelerator = Accelerator(mixed_precision="no")
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    model, loader = accelerator.prepare(model, loader)
    result = train_loop(model, loader, config, accelerator)
    return result.train_seconds / result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, batches = build(args)
    bare_loop(model, batches[:3], 1e-4)  # warm-up
    times = {"bare": [], "peftkit": []}
    for _ in range(args.repeats):
        times["bare"].append(bare_loop(model, batches, 1e-4))
        times["peftkit"].append(peftkit_loop(model, batches, 1e-4))
    bare, ours = statistics.median(times["bare"]), statistics.median(times["peftkit"])
    print(f"batch {args.batch_size} x {args.seq_len}, {args.steps} steps x {args.repeats} repeats, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"bare loop    {bare * 1000:8.1f} ms/step   runs {[round(t * 1000, 1) for t in times['bare']]}")
    print(f"peftkit loop {ours * 1000:8.1f} ms/step   runs {[round(t * 1000, 1) for t in times['peftkit']]}")
    print(f"overhead: {100 * (ours / bare - 1):+.1f}% (target: within 3%)")


if __name__ == "__main__":
    main()
