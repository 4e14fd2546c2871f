"""benchmarks/methods_table.py runs end to end (on a tiny model and a toy SST-2 folder; nothing is timed)."""

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
    cmd += ["--model", str(tiny_models["bert"]), "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    record = json.loads(output.with_name("table.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["lora", "prefix"]
    for run in record["runs"]:
        assert run["train_samples"] == 32 and 0 < run["trainable_params"] < run["total_params"]
        assert 0.0 <= run["dev_accuracy"] <= 1.0 and run["peak_rss_mb"] > 0
    assert record["environment"]["torch"] and record["settings"]["train_size"] == 32
    table = output.with_name("table.md").read_text()
    assert "| lora |" in table and "| prefix |" in table
