"""Benchmark: the cost of the NaN/inf step guard (`training.max_bad_steps`) in peftkit's training loop.

Same model (MiniLM + LoRA), same fixed-shape batches; the loop runs with the guard off
(`max_bad_steps: 0`) and on (the default, 3), alternating in one process after a warm-up.
The guard adds an isfinite check of the loss and gradient norm on the device and reads one
scalar back per optimizer step (on a GPU: one host-device sync per step). Reports median
seconds per step and the ratio.

    python benchmarks/nan_guard_overhead.py --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from pathlib import Path

import torch
from loop_overhead import build, peftkit_loop


def guarded_loop(model, batches, lr: float, max_bad_steps: int) -> float:
    return peftkit_loop(model, batches, lr, max_bad_steps=max_bad_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="write the runs as JSON here")
    args = parser.parse_args()
    model, batches = build(args)
    guarded_loop(model, batches[:3], 1e-4, 3)  # warm-up
    times = {"off": [], "on": []}
    for _ in range(args.repeats):
        times["off"].append(guarded_loop(model, batches, 1e-4, 0))
        times["on"].append(guarded_loop(model, batches, 1e-4, 3))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(
        f"batch {args.batch_size} x {args.seq_len}, {args.steps} steps x {args.repeats} repeats, {args.model}"
    )
    print(f"guard off {off * 1000:8.1f} ms/step   runs {[round(t * 1000, 1) for t in times['off']]}")
    print(f"guard on  {on * 1000:8.1f} ms/step   runs {[round(t * 1000, 1) for t in times['on']]}")
    print(f"guard cost: {100 * (on / off - 1):+.1f}%")
    if args.output:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
        record = {
            "args": vars(args),
            "seconds_per_step": times,
            "median_ms": {"off": off * 1000, "on": on * 1000},
            "ratio_on_off": on / off,
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cuda": None},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "commit": commit.strip(),
        }
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
