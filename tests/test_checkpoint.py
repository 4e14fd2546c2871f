"""Checkpoints, resume and pre-emption on the tiny BERT: a resumed run ends exactly where an uninterrupted one does.

The reference run trains 12 optimizer steps (gradient accumulation 2, 15 batches per
epoch, so the step-5 checkpoint sits mid-epoch and the run crosses an epoch boundary),
with the model's own dropout on, so that restoring the random generators matters.
"""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_config
from safetensors.torch import load_file

import peftkit.api
import peftkit.checkpoint
from peftkit.api import finetune
from peftkit.checkpoint import MARKER, committed, find_resume, fingerprint, rotate
from peftkit.cli import EXIT_INTERRUPTED, main
from peftkit.config import ConfigError, config_from_dict
from peftkit.train import _StopOnSignal


def run_config(tiny_models, toy_files, out: Path, **training) -> dict:
    settings = dict(
        max_steps=12,
        gradient_accumulation_steps=2,
        save_every_steps=5,
        save_total_limit=1,
        eval_every_steps=5,
        metric_for_best="loss",
        log_every_steps=1,
    )
    return tiny_run_config(tiny_models["bert"], toy_files, out, **(settings | training))


def trainables(result) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}


def assert_same_run(result, reference) -> None:
    assert result.metrics["train"]["steps"] == 12
    assert result.metrics["train"]["losses"] == reference.metrics["train"]["losses"]
    expected, got = trainables(reference), trainables(result)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected)


@pytest.fixture(scope="module")
def reference(tiny_models, toy_files, tmp_path_factory):
    """The uninterrupted run."""
    return finetune(run_config(tiny_models, toy_files, tmp_path_factory.mktemp("reference")))


def test_reference_run_writes_and_rotates_checkpoints(reference):
    folder = reference.output_dir / "checkpoints"
    states = {p.name: json.loads((p / "trainer_state.json").read_text()) for p in committed(folder)}
    assert len(reference.metrics["train"]["losses"]) == 12
    # save_total_limit=1 keeps step-10; step-5 stays only if its evaluation loss is the better one
    assert "step-10" in states and set(states) <= {"step-5", "step-10"}
    if "step-5" in states:
        assert states["step-5"]["metrics"]["loss"] < states["step-10"]["metrics"]["loss"]
    assert states["step-10"]["position"] == {"epoch": 1, "batch": 4, "step": 10, "micro_step": 4}
    assert states["step-10"]["losses"] == reference.metrics["train"]["losses"][:10]
    files = {p.name for p in (folder / "step-10").iterdir()}
    assert {"trainable.safetensors", "optimizer.safetensors", "rng_state.safetensors", MARKER} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


_HANG_AT_FORWARD = """
import json, sys, time
from pathlib import Path
import peftkit.api as api

apply_adapter = api.apply_adapter

def apply_and_hang(*args, **kwargs):
    model = apply_adapter(*args, **kwargs)
    forwards = []

    def hang(module, inputs):
        forwards.append(module.training)
        if sum(forwards) == {forward}:  # training forwards only
            Path(sys.argv[2]).touch()
            time.sleep(600)

    model.register_forward_pre_hook(hang)
    return model

api.apply_adapter = apply_and_hang
api.finetune(json.loads(Path(sys.argv[1]).read_text()))
"""


def test_resume_after_sigkill_matches_the_uninterrupted_run(reference, tiny_models, toy_files, tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(run_config(tiny_models, toy_files, out)))
    hanging = tmp_path / "hanging"
    # forward 12 is the second micro-batch of optimizer step 6: killed mid-accumulation, after step-5
    script = textwrap.dedent(_HANG_AT_FORWARD).replace("{forward}", "12")
    child = subprocess.Popen([sys.executable, "-c", script, str(recipe), str(hanging)])
    try:
        deadline = time.monotonic() + 180
        while not hanging.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hanging.exists(), f"child exited with {child.returncode} before reaching the kill point"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
    assert [p.name for p in committed(out / "checkpoints")] == ["step-5"]

    resumed = finetune(run_config(tiny_models, toy_files, out, resume="auto"))
    assert_same_run(resumed, reference)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))  # steps 1-5 kept, 6-12 redone once


def test_crash_while_writing_leaves_the_previous_checkpoint(
    reference, tiny_models, toy_files, tmp_path, monkeypatch
):
    dump_state = peftkit.checkpoint.dump_state

    def fail_at_step_10(state, folder, name):
        if folder.name == ".tmp-step-10" and name == "scheduler":  # after the weights and optimizer files
            raise OSError("disk full")
        dump_state(state, folder, name)

    monkeypatch.setattr(peftkit.checkpoint, "dump_state", fail_at_step_10)
    with pytest.raises(OSError, match="disk full"):
        finetune(run_config(tiny_models, toy_files, tmp_path))
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert not (folder / ".tmp-step-10").exists()  # a failed write removes its partial folder
    shutil.copytree(folder / "step-5", folder / "step-11")
    (folder / "step-11" / MARKER).unlink()  # a folder that lost its marker (a hard crash mid-write)
    assert find_resume("auto", folder) == folder / "step-5"

    resumed = finetune(run_config(tiny_models, toy_files, tmp_path, resume="auto"))
    assert_same_run(resumed, reference)
    assert not list(folder.glob(".tmp-*"))
    assert [p.name for p in committed(folder)][-1] == "step-10"


def test_sigterm_checkpoints_exits_143_and_resume_loses_no_step(
    reference, tiny_models, toy_files, tmp_path, monkeypatch
):
    apply_adapter = peftkit.api.apply_adapter

    def apply_and_signal(*args, **kwargs):
        model = apply_adapter(*args, **kwargs)
        forwards = []

        def sigterm_at_forward_7(module, inputs):  # first micro-batch of optimizer step 4
            forwards.append(module.training)
            if sum(forwards) == 7 and module.training:
                signal.raise_signal(signal.SIGTERM)

        model.register_forward_pre_hook(sigterm_at_forward_7)
        return model

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(run_config(tiny_models, toy_files, tmp_path / "run")))
    monkeypatch.setattr(peftkit.api, "apply_adapter", apply_and_signal)
    assert main(["train", str(recipe)]) == EXIT_INTERRUPTED == 143
    monkeypatch.undo()
    run = tmp_path / "run"
    assert [p.name for p in committed(run / "checkpoints")] == ["step-4"]  # step 4 finished, then saved
    assert not (run / "run.json").exists()

    assert main(["train", str(recipe), "--resume", "auto"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["train"]["steps"] == 12
    assert record["metrics"]["train"]["losses"] == reference.metrics["train"]["losses"]
    expected = load_file(reference.output_dir / "adapter" / "adapter_model.safetensors")
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_signals_set_a_flag_and_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _StopOnSignal() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # a launcher may follow up with another signal: still one flag
        assert stop.signal_name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt), _StopOnSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_mismatched_checkpoint_is_refused_naming_what_changed(reference, tiny_models, toy_files, tmp_path):
    step = committed(reference.output_dir / "checkpoints")[-1]
    other_rank = run_config(tiny_models, toy_files, tmp_path, resume=str(step))
    other_rank["adapter"]["r"] = 4
    with pytest.raises(ConfigError, match=r"adapter\.r: 8 -> 4"):
        finetune(other_rank)
    changed = dict(toy_files, train=tmp_path / "other.csv")
    changed["train"].write_text(toy_files["train"].read_text() + "good great film,positive\n")
    with pytest.raises(ConfigError, match=r"data\.train_file\.bytes: \d+ -> \d+"):
        finetune(run_config(tiny_models, changed, tmp_path, resume=str(step)))
    config = config_from_dict(run_config(tiny_models, toy_files, reference.output_dir))
    with pytest.raises(ConfigError, match=r"world_size: 1 -> 2"):
        peftkit.checkpoint.check_fingerprint(step, fingerprint(config, world_size=2))
    with pytest.raises(ConfigError, match="not a committed checkpoint"):
        finetune(run_config(tiny_models, toy_files, tmp_path, resume=str(tmp_path)))


def fake_checkpoint(folder: Path, step: int, metrics: dict | None, commit: bool = True) -> Path:
    path = folder / f"step-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "metrics": metrics}))
    if commit:
        (path / MARKER).write_text("")
    return path


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    scores = {5: 0.6, 10: 0.9, 15: 0.7, 20: None, 25: 0.8}
    for step, accuracy in scores.items():
        fake_checkpoint(
            tmp_path, step, {"accuracy": accuracy, "loss": 1 - (accuracy or 0)} if accuracy else None
        )
    fake_checkpoint(
        tmp_path, 30, {"accuracy": 1.0}, commit=False
    )  # never committed: not counted, not deleted
    (tmp_path / ".tmp-step-35").mkdir()
    deleted = rotate(tmp_path, keep_last=2, metric="accuracy")
    assert sorted(p.name for p in deleted) == ["step-15", "step-5"]
    assert [p.name for p in committed(tmp_path)] == ["step-10", "step-20", "step-25"]
    assert (tmp_path / "step-30").is_dir() and (tmp_path / ".tmp-step-35").is_dir()
    assert [p.name for p in rotate(tmp_path, keep_last=1, metric="loss")] == [
        "step-20"
    ]  # step-10: lowest loss
    assert [p.name for p in rotate(tmp_path, keep_last=5, metric="accuracy")] == []


def test_launch_configs_parse_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"
    configs = sorted(folder.glob("*.yaml"))
    names = {p.stem for p in configs}
    assert names == {
        "cpu_2proc",
        "single_gpu",
        "multi_gpu_ddp",
        "fsdp_qlora",
        "deepspeed_zero2",
        "deepspeed_zero3",
    }
    for path in configs:
        assert path.read_text().startswith("#"), f"{path.name}: start with a comment saying what it is for"
        assert load_config_from_file(str(path)).distributed_type is not None


def test_gradient_checkpointing_still_trains_every_lora_b(tiny_models, toy_files, tmp_path):
    config = tiny_run_config(
        tiny_models["bert"], toy_files, tmp_path, max_steps=4, gradient_checkpointing=True
    )
    result = finetune(config)
    base = result.model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    lora_b = {n: p for n, p in result.model.named_parameters() if "lora_B" in n}
    assert len(lora_b) >= 2 * 6  # 2 layers x (query, key, value, attention output, intermediate, output)
    assert all(p.abs().sum() > 0 for p in lora_b.values()), [
        n for n, p in lora_b.items() if not p.abs().sum()
    ]
