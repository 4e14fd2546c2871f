"""Shared pieces of the guard-rail suite (issue #8): each test feeds one bad input or fault and checks
the message peftkit answers with AND that nothing was written, lost or run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import tiny_run_config

from peftkit.api import finetune


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temp_files(folder: Path) -> list[str]:
    """Leftover temporary files or folders (`.NAME.tmp-PID`, `.tmp-step-N`, `.NAME.old-PID`) under `folder`."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name
    )


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make any model or tokenizer load (or data read) fail loudly: guards must fire before them."""
    import peftkit.api

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded a model, tokenizer or data before the guard fired")

    for name in ("load_model", "load_tokenizer"):
        monkeypatch.setattr(peftkit.api, name, forbidden)


@pytest.fixture(scope="session")
def guard_run(tiny_models, toy_files, tmp_path_factory) -> Path:
    """A short LoRA run on tiny BERT: its folder holds run.json and adapter/ (a few seconds)."""
    out = tmp_path_factory.mktemp("guard-run") / "run"
    config = tiny_run_config(tiny_models["bert"], toy_files, out, max_steps=4)
    return finetune(config).output_dir
