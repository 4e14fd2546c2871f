"""Benchmark: peak memory of full fine-tuning vs LoRA vs QLoRA on the same model and batches.

Each method runs in its own subprocess: load the model through peftkit
(`load_model`, 4-bit NF4 base for QLoRA), attach the adapter (none for full
fine-tuning: every parameter trains), then run a few optimizer steps of
peftkit's training loop on fixed-shape batches. Reported: peak RSS of the
process (CPU) and peak allocated GPU memory (when on GPU), trainable
parameters, and seconds per step. Ratios are against full fine-tuning.

    python benchmarks/memory_full_lora_qlora.py                      # MiniLM, CPU
    python benchmarks/memory_full_lora_qlora.py --model /path/to/llama --batch-size 4 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ("full", "lora", "qlora")


def child(args) -> dict:
    import torch
    from accelerate import Accelerator
    from common import fixed_batches

    from peftkit.adapters import apply_adapter, count_parameters
    from peftkit.config import AdapterConfig, ModelConfig, TrainingConfig
    from peftkit.model import load_model, load_tokenizer
    from peftkit.train import train_loop

    model_config = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    adapter = AdapterConfig(method="lora" if args.method == "full" else args.method, lora_dropout=0.0)
    tokenizer = load_tokenizer(model_config)
    loaded = load_model(model_config, ["negative", "positive"], tokenizer, adapter=adapter)
    if args.method == "full":
        model = loaded.model.float()
        model.requires_grad_(True)
    else:
        model = apply_adapter(loaded.model, adapter, loaded.family)
    trainable, total = count_parameters(model)
    batches = fixed_batches(model, args.batch_size, args.seq_len, args.steps)
    accelerator = Accelerator()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    model, loader = accelerator.prepare(model, loader)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    config = TrainingConfig(learning_rate=1e-4, max_steps=args.steps, progress_bar=False)
    result = train_loop(model, loader, config, accelerator)
    return {
        "trainable": trainable,
        "total": total,
        "seconds_per_step": result.train_seconds / result.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--dtype", default="float32", help="dtype of the non-quantized weights")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    flags = ["--model", args.model, "--dtype", args.dtype, "--batch-size", str(args.batch_size),
             "--seq-len", str(args.seq_len), "--steps", str(args.steps)]  # fmt: skip
    results = {}
    for method in args.methods.split(","):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", method, *flags], capture_output=True, text=True
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{method}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        results[method] = json.loads(lines[-1].removeprefix("RESULT ")) | {
            "wall": time.perf_counter() - started
        }
    base = results.get("full")
    print(f"{args.model}  batch {args.batch_size} x {args.seq_len}, {args.steps} steps")
    print(
        f"{'method':7s} {'trainable':>12s} {'peak RSS MB':>12s} {'x full':>7s} {'peak GPU MB':>12s} {'x full':>7s} {'s/step':>7s}"
    )
    for method, r in results.items():
        rss_ratio = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        gpu = r["peak_gpu_mb"]
        gpu_ratio = gpu / base["peak_gpu_mb"] if base and gpu else float("nan")
        print(f"{method:7s} {r['trainable']:12,d} {r['peak_rss_mb']:12.0f} {rss_ratio:7.2f} "
              f"{gpu or float('nan'):12.0f} {gpu_ratio:7.2f} {r['seconds_per_step']:7.3f}")  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
