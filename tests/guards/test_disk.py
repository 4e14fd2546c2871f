"""Group 7, disk: a write that fails (no space left on the device) leaves earlier checkpoints and exports
untouched and removes its own temporary files."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_run_config

import peftkit.checkpoint
import peftkit.export
from peftkit.api import finetune
from peftkit.checkpoint import committed
from peftkit.export import export_model
from peftkit.io import write_json

from .conftest import snapshot, temp_files


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_export_keeps_the_earlier_export_and_leaves_no_temp_files(guard_run, tmp_path, monkeypatch):
    out = tmp_path / "exports" / "tickets"
    export_model(guard_run, out)
    before = snapshot(out)
    copy2, copied = shutil.copy2, []

    def copy_then_fill_the_disk(src, dst, *args, **kwargs):
        if copied:  # the first file is written, then the disk is full
            no_space()
        copied.append(Path(src).name)
        return copy2(src, dst, *args, **kwargs)

    monkeypatch.setattr(peftkit.export.shutil, "copy2", copy_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left on device"):
        export_model(guard_run, out)
    assert copied  # the failure happened mid-write, after a file was written
    assert snapshot(out) == before
    assert temp_files(tmp_path) == []


def test_failed_checkpoint_keeps_the_earlier_ones_and_leaves_no_temp_files(
    tiny_models, toy_files, tmp_path, monkeypatch, one_thread
):
    out = tmp_path / "run"
    save_file, seen = peftkit.checkpoint.save_file, {}

    def fill_the_disk_at_step_6(tensors, path, *args, **kwargs):
        if Path(path).parent.name == ".tmp-step-6":
            seen.update(snapshot(out / "checkpoints"))
            save_file(tensors, path, *args, **kwargs)  # a file lands in the temporary folder first
            no_space()
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(peftkit.checkpoint, "save_file", fill_the_disk_at_step_6)
    config = tiny_run_config(
        tiny_models["bert"], toy_files, out, max_steps=8, save_every_steps=2, save_total_limit=5
    )
    with pytest.raises(OSError, match="No space left on device"):
        finetune(config)
    assert [p.name for p in committed(out / "checkpoints")] == ["step-2", "step-4"]
    assert seen and snapshot(out / "checkpoints") == seen
    assert temp_files(out) == []


def test_failed_json_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    write_json(target, {"metrics": {"accuracy": 0.9}})
    before = target.read_bytes()
    real_write_text = Path.write_text

    def half_write(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        no_space()

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="No space left on device"):
        write_json(target, {"metrics": {"accuracy": 0.1}})
    monkeypatch.undo()
    assert target.read_bytes() == before and json.loads(before)["metrics"]["accuracy"] == 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
