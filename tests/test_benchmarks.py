"""The benchmark scripts run end to end on tiny models and toy data. Nothing here is timed."""

import json
import subprocess
import sys
from pathlib import Path

import tiny

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "methods_table.py"


def write_sst2(folder: Path) -> Path:
    folder.mkdir()
    for name, n, seed in (("train.tsv", 64, 1), ("dev.tsv", 16, 2)):
        rows = [f"{int(r['label'] == 'positive')}\t{r['text']}" for r in tiny.toy_sentiment(n, seed=seed)]
        (folder / name).write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    return folder


def test_methods_table_writes_one_row_per_method(tiny_models, tmp_path):
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "table"
    cmd = [sys.executable, str(SCRIPT), "--sst2", str(sst2), "--train-size", "32", "--methods", "lora,prefix"]
    cmd += ["--model", str(tiny_models["bert"]), "--output", str(output), "--set", "data.max_length=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    record = json.loads(output.with_name("table.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["lora", "prefix"]
    for run in record["runs"]:
        assert run["train_samples"] == 32 * run["num_epochs"]  # epochs come from each recipe
        assert 0 < run["trainable_params"] < run["total_params"]
        assert 0.0 <= run["dev_accuracy"] <= 1.0 and run["peak_rss_mb"] > 0
        if Path("/proc/self/clear_refs").exists():  # peaks per phase: Linux only
            phases = run["phase_peak_rss_mb"]
            assert 0 < phases["load"] <= run["peak_rss_mb"] and 0 < phases["train"] <= run["peak_rss_mb"]
    assert record["environment"]["torch"] and record["settings"]["train_size"] == 32
    assert record["settings"]["overrides"] == ["data.max_length=16"]
    table = output.with_name("table.md").read_text()
    assert "| lora |" in table and "| prefix |" in table and "data.max_length=16" in table


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_trainer_vs_peftkit_prints_the_ratio(tiny_models, tmp_path):
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "result.json"
    out = run_script(
        "trainer_vs_peftkit.py", "--sst2", str(sst2), "--model", str(tiny_models["bert"]), "--train-size", "32",
        "--repeats", "1", "--output", str(output),
    )  # fmt: skip
    assert "ratio" in out
    median = json.loads(output.read_text())["median"]
    assert set(median) == {"trainer", "peftkit"}
    assert median["trainer"]["ratio_vs_trainer"] == 1.0 and median["peftkit"]["ratio_vs_trainer"] > 0


def test_loop_overhead_prints_the_overhead(tiny_models):
    out = run_script(
        "loop_overhead.py", "--model", str(tiny_models["bert"]), "--steps", "3", "--repeats", "1"
    )
    assert "overhead:" in out and "bare loop" in out


def test_memory_benchmark_has_a_row_per_method(tiny_models, tmp_path):
    output = tmp_path / "memory.json"
    run_script(
        "memory_full_lora_qlora.py", "--model", str(tiny_models["llama"]), "--batch-size", "2", "--seq-len", "8",
        "--steps", "2", "--output", str(output),
    )  # fmt: skip
    results = json.loads(output.read_text())["results"]
    assert set(results) == {"full", "lora", "qlora"}
    assert results["lora"]["trainable"] < results["full"]["trainable"]
