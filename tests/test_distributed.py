"""Two processes under `accelerate launch` (DDP over gloo, on the CPU) train like one process with the same batches.

One process with batch 16 and two with batch 8 each see the same 16 examples per
optimizer step: without length grouping the sampler yields [0:8], [8:16], ... and
accelerate deals them out in turn, so process 0 gets [0:8] and process 1 [8:16], and
DDP averages the two batch-mean gradients, which is the mean over all 16. With dropout
off, only floating-point rounding differs (a sum over 16 vs two sums of 8 averaged, and
each batch padded to its own longest row). Measured on 2 CPU cores: losses within 2e-7
(relative), trained weights (up to 0.22 in size) within 1.2e-6; the test allows 1e-4 for
both, room for other CPUs and thread counts, while a wrong batch split or a missing
gradient average is off by 1e-2 or more.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_config
from safetensors.torch import load_file

from peftkit.api import finetune
from peftkit.checkpoint import committed

CPU_2PROC = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu_2proc.yaml"


def without_dropout(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tiny_models, toy_files, tmp_path):
    model_dir = without_dropout(tiny_models["bert"], tmp_path / "bert")
    settings = dict(
        num_epochs=1, group_by_length=False, log_every_steps=1, eval_every_steps=5, save_every_steps=5
    )
    one = finetune(tiny_run_config(model_dir, toy_files, tmp_path / "one", batch_size=16, **settings))

    out = tmp_path / "two"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_run_config(model_dir, toy_files, out, batch_size=8, **settings)))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC)]
    launch += ["--main_process_port", str(free_port()), "-m", "peftkit", "train", str(recipe)]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # CPU processes even on a GPU machine
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"output_dir"') == 1  # the summary is printed by process 0 only

    two = json.loads((out / "run.json").read_text())["metrics"]
    assert two["train"]["steps"] == one.metrics["train"]["steps"] == 15
    assert two["train"]["samples"] == one.metrics["train"]["samples"] == 240
    assert two["validation"]["samples"] == 80  # gathered from both processes, padding dropped
    assert two["train"]["losses"] == pytest.approx(one.metrics["train"]["losses"], rel=1e-4)
    assert two["validation"]["accuracy"] == one.metrics["validation"]["accuracy"]
    expected = load_file(one.adapter_dir / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-4
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in got.items() if "lora_B" in k)

    # one writer: one run folder, each log record once, checkpoints from process 0 with both RNG states
    assert {p.name for p in out.iterdir()} == {"adapter", "checkpoints", "metrics.jsonl", "run.json"}
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 16))
    assert [r["step"] for r in log if "eval" in r] == [5, 10, 15]
    steps = committed(out / "checkpoints")
    assert [p.name for p in steps][-2:] == ["step-10", "step-15"] and len(steps) <= 3  # + the best, if older
    state = json.loads((steps[-1] / "trainer_state.json").read_text())
    assert state["fingerprint"]["world_size"] == 2 and state["position"]["batch"] == 15
    assert len(json.loads((steps[-1] / "rng_state.json").read_text())["state"]) == 2
