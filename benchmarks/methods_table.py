"""Benchmark: every adapter method on MiniLM / SST-2, in one table.

Each method trains with its recipe (`recipes/classification/<method>_minilm_sst2.yaml`,
so the settings are the shipped ones) on the same SST-2 subset (seeded shuffle,
first N rows, one epoch) and is scored on SST-2 dev. Every run is its own
subprocess, so peak memory is per method. The table gives trainable parameters
(count and % of the model), weight memory, train samples/s, peak RSS (and peak GPU
memory on a GPU) and dev accuracy, with the machine, library versions and commit.

Peak RSS is also split by phase (Linux: the kernel's high-water mark `VmHWM`, reset
through `/proc/self/clear_refs` when a phase starts): loading the model (for QLoRA:
reading the float32 checkpoint and quantizing it) and training (with its evaluations).

    python benchmarks/methods_table.py --sst2 ../shared/data/sst2 --train-size 4000
    python benchmarks/methods_table.py --sst2 ../shared/data/sst2 --methods qlora,lora --train-size 1000
    python benchmarks/methods_table.py --sst2 ../shared/data/sst2 --methods lora,qlora --train-size 1000 \
        --model bundled:SmolLM2-135M-Instruct --set data.max_length=64 --set training.batch_size=16 \
        --output benchmarks/results/methods_table_smollm2_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common import table_head

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes" / "classification"
SUFFIX = "_minilm_sst2.yaml"
ORDER = ("lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt", "bottleneck")


def recipe_methods() -> list[str]:
    """Methods with a MiniLM / SST-2 recipe, the LoRA family first."""
    found = {p.name.removesuffix(SUFFIX) for p in RECIPES.glob(f"*{SUFFIX}")}
    return [m for m in ORDER if m in found] + sorted(found - set(ORDER))


# ---------------------------------------------------------------- one run (child process)


def run_method(args, out_dir: str) -> dict:
    import resource
    from dataclasses import asdict

    from peftkit.api import finetune
    from peftkit.config import AdapterConfig, load_recipe

    overrides = [
        f"data.train_file={args.sst2}/train.tsv",
        f"data.validation_file={args.sst2}/dev.tsv",
        f"data.max_train_samples={args.train_size}",
        f"training.output_dir={out_dir}",
        *([f"model.name_or_path={args.model}"] if args.model else []),
        "training.progress_bar=false",
        "export.save_adapter=false",
        *args.overrides,
    ]
    config = load_recipe(RECIPES / f"{args.child}{SUFFIX}", overrides)
    with PhasePeaks() as phases:
        result = finetune(config)
        peak_rss_mb = phases.process_peak(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    trainable, total = result.metrics["parameters"]["trainable"], result.metrics["parameters"]["total"]
    return {
        "method": args.child,
        "adapter": {k: v for k, v in asdict(config.adapter).items() if v != getattr(AdapterConfig(), k)},
        "learning_rate": config.training.learning_rate,
        "num_epochs": config.training.num_epochs,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "weights_mb": weight_bytes(result.model) / 2**20,
        "train_samples": result.metrics["train"]["samples"],
        "train_samples_per_second": result.metrics["train"]["samples_per_second"],
        "dev_accuracy": result.metrics["validation"]["accuracy"],
        "phase_peak_rss_mb": phases.peaks,
        "peak_rss_mb": peak_rss_mb,
    }


def weight_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers (4-bit weights count as stored)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _status_mb(field: str) -> float | None:
    """A memory line of `/proc/self/status` (`VmHWM`, `VmRSS`, `RssAnon`) in MB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


class PhasePeaks:
    """Peak RSS of `finetune`'s phases: `load` (tokenizer and model) and `train` (the loop, evaluations included).

    Wraps the two stages as `peftkit.api` calls them, for this benchmark's process only; each phase starts
    by resetting the kernel's RSS high-water mark (`echo 5 > /proc/self/clear_refs`) and ends by reading it.
    The reset also lowers `getrusage`'s maxrss, so `process_peak()` keeps the mark read before each reset.
    """

    STAGES = {"load": "load_model", "train": "train_loop"}

    def __enter__(self) -> PhasePeaks:
        import peftkit.api as api

        self.peaks: dict[str, float | None] = {}
        self._before_resets = 0.0
        self._api, self._saved = api, {name: getattr(api, name) for name in self.STAGES.values()}
        for phase, name in self.STAGES.items():
            setattr(api, name, self._measured(phase, self._saved[name]))
        return self

    def _measured(self, phase: str, fn):
        def run(*args, **kwargs):
            clear_refs = Path("/proc/self/clear_refs")
            if clear_refs.exists():
                self._before_resets = max(self._before_resets, _status_mb("VmHWM") or 0.0)
                clear_refs.write_text("5")
            try:
                return fn(*args, **kwargs)
            finally:
                self.peaks[phase] = _status_mb("VmHWM")

        return run

    def process_peak(self, maxrss_mb: float) -> float:
        """The whole process's peak RSS, given `getrusage`'s maxrss (MB) read after the last phase."""
        # the kernel's RSS counters are per-thread approximations: a later read can be a few KB lower
        return max(
            maxrss_mb, self._before_resets, _status_mb("VmHWM") or 0.0, *(p for p in self.peaks.values() if p)
        )

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(self._api, name, fn)


class PeakAnonymousMemory:
    """Samples the process's anonymous resident memory (Linux `RssAnon`) in a thread and keeps the peak.

    Peak RSS also counts the pages of the memory-mapped checkpoint that were read, which the kernel can drop
    at will; for a quantized model that includes the full-precision weights it read once to quantize them.
    Anonymous memory (heap: weights held in memory, activations, optimizer state) is what the model costs.
    """

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak_mb, self._stop = interval, None, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakAnonymousMemory:
        if Path("/proc/self/status").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb or 0.0, _status_mb("RssAnon") or 0.0)
            self._stop.wait(self.interval)


def child(args) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out_dir, PeakAnonymousMemory() as anonymous:
        started = time.perf_counter()
        result = run_method(args, out_dir)
        result["wall_seconds"] = time.perf_counter() - started
    result["peak_anon_rss_mb"] = anonymous.peak_mb
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the table (parent process)


def spawn(args, method: str) -> dict:
    flags = ["--sst2", args.sst2, "--train-size", str(args.train_size)] + (
        ["--model", args.model] if args.model else []
    )
    flags += [f"--set={item}" for item in args.overrides]
    cmd = [sys.executable, __file__, "--child", method, *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{method} run failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def environment() -> dict:
    import peft
    import torch
    import transformers

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": _version("bitsandbytes"),
        "python": platform.python_version(),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=HERE).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return (commit + "+dirty" if dirty else commit) or None


def markdown(record: dict) -> str:
    env, settings = record["environment"], record["settings"]
    gpu = env["cuda"] is not None
    overrides = ", ".join(settings.get("overrides") or [])
    notes = [
        "",
        "Weights MB: parameters and buffers as stored (4-bit weights packed). Peak RSS: the whole process "
        "(Python, torch, data, model). Load / train peak: the RSS high-water mark while loading the model / "
        "while training and evaluating (reset when the phase starts). Peak RSS counts the pages of the "
        "memory-mapped checkpoint that were read; peak anon. RSS leaves those out (sampled every 5 ms).",
    ]
    lines = [
        f"# Adapter methods on {settings.get('model') or 'MiniLM'} / SST-2 "
        f"({settings['train_size']} training sentences; learning rate and epochs from each recipe"
        + (f"; {overrides}" if overrides else "")
        + ")",
        "",
        f"{env['date']}, commit {env['commit']}; {env['machine']}" + (f", {env['cuda']}" if gpu else ""),
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
        f"bitsandbytes {env['bitsandbytes']}, Python {env['python']}",
        "",
        *table_head(
            "method",
            "lr",
            "epochs",
            "trainable params",
            "%",
            "weights MB",
            "train samples/s",
            "peak RSS MB",
            "load peak MB",
            "train peak MB",
            "peak anon. RSS MB",
            *(["peak GPU MB"] if gpu else []),
            "dev accuracy",
        ),
    ]
    for r in record["runs"]:
        phases = r.get("phase_peak_rss_mb") or {}
        lines.append(
            f"| {r['method']} | {r['learning_rate']:g} | {r.get('num_epochs', 1):g} | {r['trainable_params']:,} "
            f"| {r['trainable_percent']:.2f} | {r['weights_mb']:.0f} | {r['train_samples_per_second']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {_mb(phases.get('load'))} | {_mb(phases.get('train'))} "
            f"| {_mb(r.get('peak_anon_rss_mb'))} |"
            + (f" {r['peak_gpu_mb']:.0f} |" if gpu else "")
            + f" {r['dev_accuracy']:.4f} |"
        )
    return "\n".join(lines + notes) + "\n"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--methods", default=",".join(recipe_methods()), help="comma list of recipe methods")
    parser.add_argument("--model", help="another base model than the recipes' MiniLM (a Hub id or folder)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a field of every recipe, e.g. --set data.max_length=64 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--output", default=str(HERE / "results" / "methods_table"), help="writes OUTPUT.json and OUTPUT.md"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(recipe_methods()))
    if unknown:
        parser.error(f"no recipe for {unknown}; choices: {', '.join(recipe_methods())}")
    settings = {"sst2": args.sst2, "train_size": args.train_size, "model": args.model, "methods": methods}
    settings["overrides"] = args.overrides
    record = {"environment": environment(), "settings": settings, "runs": []}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for i, method in enumerate(methods, 1):
        record["runs"].append(spawn(args, method))
        print(f"[{i}/{len(methods)}] {json.dumps(record['runs'][-1])}", flush=True)
        # written after every run: an interrupted table keeps what it measured
        output.with_name(output.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
        output.with_name(output.name + ".md").write_text(markdown(record))
    print("\n" + markdown(record) + f"\nwritten to {output}.json and {output}.md")


if __name__ == "__main__":
    main()
