"""Benchmark: peak memory of full fine-tuning vs LoRA vs QLoRA on the same model and batches.

Each method runs in its own subprocess: load the model through peftkit
(`load_model`, 4-bit NF4 base for QLoRA), attach the adapter (none for full
fine-tuning: every parameter trains), then run a few optimizer steps of
peftkit's training loop on fixed-shape batches. Reported: peak RSS of the
process (CPU) and peak allocated GPU memory (when on GPU), trainable
parameters, and seconds per step. Ratios are against full fine-tuning (else the
first method run).

On a CPU the process's RSS also holds heap that torch freed but glibc kept, so
`--live` adds the peak of live tensors during one more forward + backward pass
(torch profiler memory timeline), split into weights, activations and the rest:
what the method itself needs, with no allocator in between.
`--gradient-checkpointing` recomputes activations in the backward pass.

    python benchmarks/memory_full_lora_qlora.py                      # MiniLM, CPU
    python benchmarks/memory_full_lora_qlora.py --model /path/to/llama --batch-size 4 --seq-len 512
    python benchmarks/memory_full_lora_qlora.py --model bundled:SmolLM2-135M-Instruct --methods lora,qlora \
        --batch-size 16 --seq-len 64 --gradient-checkpointing --live
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("full", "lora", "qlora")


def child(args) -> dict:
    import torch
    from accelerate import Accelerator
    from common import fixed_batches

    from peftkit.adapters import apply_adapter, count_parameters
    from peftkit.config import AdapterConfig, ModelConfig, TrainingConfig
    from peftkit.model import load_model, load_tokenizer
    from peftkit.train import enable_gradient_checkpointing, train_loop

    model_config = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    adapter = AdapterConfig(method="lora" if args.method == "full" else args.method, lora_dropout=0.0)
    tokenizer = load_tokenizer(model_config)
    loaded = load_model(model_config, ["negative", "positive"], tokenizer, adapter=adapter)
    if args.method == "full":
        model = loaded.model.float()
        model.requires_grad_(True)
    else:
        model = apply_adapter(loaded.model, adapter, loaded.family)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    batches = fixed_batches(model, args.batch_size, args.seq_len, args.steps)
    accelerator = Accelerator()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    model, loader = accelerator.prepare(model, loader)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    config = TrainingConfig(learning_rate=1e-4, max_steps=args.steps, progress_bar=False)
    result = train_loop(model, loader, config, accelerator)
    # read before the profiled pass, which adds the profiler's own memory
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    live = live_peak_mb(model, batches[0]) if args.live and not torch.cuda.is_available() else None
    return {
        "peak_live_mb": live,
        "trainable": trainable,
        "total": total,
        "seconds_per_step": result.train_seconds / result.steps,
        "peak_rss_mb": peak_rss_mb,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


# the memory timeline's columns: index 0 unused, then torch.profiler._memory_profiler's categories
LIVE_COLUMNS = (
    "-",
    "weights",
    "optimizer",
    "input",
    "temporary",
    "activations",
    "gradients",
    "autograd",
    "other",
)


def live_peak_mb(model, batch: dict) -> dict:
    """The peak of live CPU tensors (MB) during one forward + backward pass of `batch`, by kind, at that peak."""
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as p:
        model(**batch).loss.backward()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        p.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    at_peak = max(sizes, key=sum)
    by_kind = {name: size / 2**20 for name, size in zip(LIVE_COLUMNS, at_peak, strict=True) if name != "-"}
    weights, activations = by_kind.pop("weights"), by_kind.pop("activations")
    return {
        "total": sum(at_peak) / 2**20,
        "weights": weights,
        "activations": activations,
        "other": sum(by_kind.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--dtype", default="float32", help="dtype of the non-quantized weights")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--live", action="store_true", help="CPU: also the peak of live tensors (torch profiler)"
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    flags = ["--model", args.model, "--dtype", args.dtype, "--batch-size", str(args.batch_size),
             "--seq-len", str(args.seq_len), "--steps", str(args.steps)]  # fmt: skip
    flags += ["--gradient-checkpointing"] * args.gradient_checkpointing + ["--live"] * args.live
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
    reference = "full" if "full" in results else next(iter(results), "full")  # ratios against this method
    base = results.get(reference)
    print(
        f"{args.model}  batch {args.batch_size} x {args.seq_len}, {args.steps} steps"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
    )
    print(
        f"{'method':7s} {'trainable':>12s} {'peak RSS MB':>12s} {'x ' + reference:>7s} {'peak GPU MB':>12s} {'x ' + reference:>7s} {'s/step':>7s}"
    )
    for method, r in results.items():
        rss_ratio = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        gpu = r["peak_gpu_mb"]
        gpu_ratio = gpu / base["peak_gpu_mb"] if base and gpu else float("nan")
        print(f"{method:7s} {r['trainable']:12,d} {r['peak_rss_mb']:12.0f} {rss_ratio:7.2f} "
              f"{gpu or float('nan'):12.0f} {gpu_ratio:7.2f} {r['seconds_per_step']:7.3f}")  # fmt: skip
    live = {m: r["peak_live_mb"] for m, r in results.items() if r.get("peak_live_mb")}
    if live:
        print(
            "\npeak of live tensors in one forward + backward pass (MB): total = weights + activations + other"
        )
        for method, v in live.items():
            print(
                f"{method:7s} {v['total']:8.1f} = {v['weights']:6.1f} + {v['activations']:6.1f} + {v['other']:6.1f}"
            )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
