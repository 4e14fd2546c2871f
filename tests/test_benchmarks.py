"""The benchmark scripts run end to end on tiny models and toy data. Nothing here is timed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
        "--steps", "2", "--live", "--output", str(output),
    )  # fmt: skip
    results = json.loads(output.read_text())["results"]
    assert set(results) == {"full", "lora", "qlora"}
    assert results["lora"]["trainable"] < results["full"]["trainable"]
    live = {method: r["peak_live_mb"] for method, r in results.items()}
    assert live["qlora"]["weights"] < live["lora"]["weights"]  # 4-bit linear layers
    for v in live.values():
        assert v["total"] == pytest.approx(v["weights"] + v["activations"] + v["other"])
        assert v["activations"] > 0


def test_transfer_table_has_a_row_per_strategy(tiny_models, tmp_path):
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "table"
    run_script(
        "transfer_table.py", "--sst2", str(sst2), "--model", str(tiny_models["bert"]), "--train-size", "32",
        "--epochs", "1", "--output", str(output),
    )  # fmt: skip
    runs = json.loads(output.with_name("table.json").read_text())["runs"]
    assert list(runs) == [
        "full", "lora", "features", "features-10x-epochs", "gradual_unfreezing", "layerwise_decay"
    ]  # fmt: skip
    full, lora, features = runs["full"][0], runs["lora"][0], runs["features"][0]
    assert full["train_samples"] == 32 and runs["features-10x-epochs"][0]["train_samples"] == 320
    assert features["trainable_params"] < lora["trainable_params"] < full["trainable_params"]
    assert all(0.0 <= r[0]["dev_accuracy"] <= 1.0 for r in runs.values())
    assert "| layerwise_decay | 1 |" in output.with_name("table.md").read_text()


def test_forgetting_scores_task_a_after_each_task_b_run(tiny_models, tmp_path):
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "forgetting"
    cr = tmp_path / "cr"
    cr.mkdir()
    (cr / "train.tsv").write_text((sst2 / "train.tsv").read_text())
    (cr / "test.tsv").write_text((sst2 / "dev.tsv").read_text())
    run_script(
        "forgetting.py", "--sst2", str(sst2), "--cr", str(cr), "--model", str(tiny_models["bert"]),
        "--train-size", "32", "--ewc-fisher-batches", "1", "--mitigations", "none,replay", "--output", str(output),
    )  # fmt: skip
    record = json.loads(output.with_name("forgetting.json").read_text())
    assert set(record["runs"]) == {"none", "replay"}
    assert record["task_a"]["train_samples"] == 64  # 32 sentences, 2 epochs
    for run in record["runs"].values():  # task A is the test split of every task-B run
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["train_samples"] > 0
    assert record["runs"]["replay"]["train_samples"] > record["runs"]["none"]["train_samples"]


def test_kshot_curve_has_k_examples_per_class(tiny_models, tmp_path):
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "kshot"
    run_script(
        "kshot_curve.py", "--sst2", str(sst2), "--model", str(tiny_models["bert"]), "--ks", "2,4", "--seeds", "1",
        "--output", str(output),
    )  # fmt: skip
    record = json.loads(output.with_name("kshot.json").read_text())
    assert set(record["curve"]) == {"features", "lora"}
    for run in record["runs"]:
        epochs = 50 if run["method"] == "features" else 20
        assert run["train_samples"] == 2 * run["k"] * epochs
    assert "| 4 |" in output.with_name("kshot.md").read_text()


def write_cr(folder: Path) -> Path:
    folder.mkdir()
    for name, n, seed in (("train.tsv", 48, 4), ("test.tsv", 24, 5)):
        rows = [
            f"{int(r['label'] == 'positive')}\t{r['text']} product" for r in tiny.toy_sentiment(n, seed=seed)
        ]
        (folder / name).write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    return folder


def test_domain_shift_scores_every_run_on_the_target(tiny_models, tmp_path):
    sst2, cr, output = write_sst2(tmp_path / "sst2"), write_cr(tmp_path / "cr"), tmp_path / "shift"
    runs = "source_only,target_supervised,intermediate,coral"  # the methods themselves: tests/domain
    run_script(
        "domain_shift.py", "--sst2", str(sst2), "--cr", str(cr), "--model", str(tiny_models["bert"]),
        "--train-size", "32", "--target-small", "16", "--pretrain-steps", "2", "--runs", runs,
        "--output", str(output), "--in-process",
    )  # fmt: skip
    record = json.loads(output.with_suffix(".json").read_text())
    assert [r["run"] for r in record["runs"]] == runs.split(",")
    by_run = {r["run"]: r for r in record["runs"]}
    for run in record["runs"]:
        assert 0.0 <= run["cr_test_accuracy"] <= 1.0 and run["train_samples"] > 0
    assert by_run["source_only"]["train_samples"] == 32 and by_run["target_supervised"]["train_samples"] == 43
    assert by_run["source_only"].get("gap_closed", 0.0) == 0.0  # absent when the two bounds tie
    assert by_run["coral"]["domain"]["report"]["penalty_first"] > 0
    assert by_run["intermediate"]["domain"]["report"]["intermediate_validation"]["samples"] == 4  # 10% of 32
    assert record["environment"]["command"].startswith("python benchmarks/domain_shift.py")
    assert "| coral |" in output.with_suffix(".md").read_text()
    merged = tmp_path / "merged"
    run_script("domain_shift.py", "--merge", str(output.with_suffix(".json")), "--output", str(merged))
    merged_runs = json.loads(merged.with_suffix(".json").read_text())["runs"]
    pick = [(r["run"], r["cr_test_accuracy"]) for r in record["runs"]]
    assert sorted((r["run"], r["cr_test_accuracy"]) for r in merged_runs) == sorted(pick)  # RUNS order


def test_smollm2_instruct_scores_before_and_after(tmp_path):
    """The script on a tiny LLaMA instead of SmolLM2: before/after scored on the same dev prompts."""
    sst2, output = write_sst2(tmp_path / "sst2"), tmp_path / "smol"
    model = tiny.save_tiny_generative_model("llama", tmp_path / "llama")
    cmd = [sys.executable, str(BENCHMARKS / "smollm2_sst2_instruct.py"), "--sst2", str(sst2)]
    cmd += ["--train-size", "32", "--dev-size", "8", "--model", str(model), "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(output.with_name("smol.json").read_text())
    (run,) = record["runs"]
    assert run["method"] == "lora" and 0 < run["train_samples"] <= 32 and record["settings"]["dev_size"] == 8
    assert run["after"]["exact_match"] == run["run_test_accuracy"]  # same prompts, same greedy decoding
    for when in ("before", "after"):
        assert 0.0 <= run[when]["exact_match"] <= run[when]["first_word"] <= 1.0
    assert "| lora |" in output.with_name("smol.md").read_text()
