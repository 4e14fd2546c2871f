"""Group 5, files: loading never unpickles, malformed safetensors headers are clean errors, and no file can
make peftkit import or run code (remote-code keys are refused; trust_remote_code stays off)."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import sys

import pytest
from conftest import tiny_run_config

from peftkit.api import finetune
from peftkit.checkpoint import dump_state, load_state
from peftkit.cli import main
from peftkit.predict import AdapterFolderError, load_classifier
from peftkit.safety import UnsafeFileError, check_safetensors

from .conftest import snapshot


class Canary:
    """Unpickling this runs code that creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def canary_pickle(file, canary) -> None:
    file.write_bytes(pickle.dumps({"weight": Canary(canary)}))


def test_the_canary_payload_is_live(tmp_path):
    """The payload used below really runs code when unpickled, so its absence later means something."""
    canary_pickle(tmp_path / "x.bin", tmp_path / "proof")
    pickle.loads((tmp_path / "x.bin").read_bytes())
    assert (tmp_path / "proof").exists()


def test_pickled_adapter_is_refused_and_its_code_never_runs(guard_run, tmp_path, capsys):
    adapter = shutil.copytree(guard_run / "adapter", tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    canary_pickle(adapter / "adapter_model.bin", tmp_path / "canary")
    before = snapshot(adapter)
    with pytest.raises(AdapterFolderError) as err:
        load_classifier(adapter)
    assert "holds no adapter_model.safetensors (found ['adapter_model.bin']: peftkit never unpickles" in str(
        err.value
    )
    assert "convert a file you trust explicitly" in str(err.value)
    assert main(["predict", str(adapter), "good film"]) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert not (tmp_path / "canary").exists()
    assert snapshot(adapter) == before


def test_pickled_base_model_is_refused_before_transformers_opens_it(tiny_models, toy_files, tmp_path):
    base = shutil.copytree(tiny_models["bert"], tmp_path / "bert")
    (base / "model.safetensors").unlink()
    canary_pickle(base / "pytorch_model.bin", tmp_path / "canary")
    with pytest.raises(UnsafeFileError) as err:
        finetune(tiny_run_config(base, toy_files, tmp_path / "out"))
    assert "has weights only as pickle files ['pytorch_model.bin']: peftkit never unpickles" in str(err.value)
    assert not (tmp_path / "canary").exists()
    assert not (tmp_path / "out").exists()


def header_file(path, header_bytes: bytes, length: int | None = None, data: bytes = b"") -> None:
    length = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", length) + header_bytes + data)


BAD_HEADERS = {
    "too short": (lambda p: p.write_bytes(b"\x01\x02"), "is too short for a safetensors file"),
    "oversized": (lambda p: header_file(p, b"{}", length=2**60), "safetensors header claims"),
    "beyond the file": (
        lambda p: header_file(p, b"{}", length=4096),
        "header claims 4,096 bytes (file 10 bytes",
    ),
    "not JSON": (lambda p: header_file(p, b"\xff\xfe not json"), "safetensors header is not valid JSON"),
    "not a mapping": (lambda p: header_file(p, b"[1, 2, 3]"), "safetensors header is a list, not a mapping"),
    "offsets outside the data": (
        lambda p: header_file(
            p,
            json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
            data=b"\0" * 8,
        ),
        "tensor 'w' has data_offsets [0, 16] outside the 8 data bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_malformed_adapter_weights_are_a_clean_error(case, guard_run, tmp_path, capsys):
    write, expected = BAD_HEADERS[case]
    adapter = shutil.copytree(guard_run / "adapter", tmp_path / "adapter")
    write(adapter / "adapter_model.safetensors")
    before = snapshot(adapter)
    with pytest.raises(UnsafeFileError, match="adapter_model.safetensors") as err:
        load_classifier(adapter)
    assert expected in str(err.value)
    assert main(["predict", str(adapter), "good film"]) == 2  # a one-line error, not a crash
    assert expected in capsys.readouterr().err
    assert snapshot(adapter) == before


def test_malformed_checkpoint_tensors_are_a_clean_error(tmp_path):
    import torch

    dump_state({"step": 3, "exp_avg": torch.ones(4)}, tmp_path, "optimizer")
    assert load_state(tmp_path, "optimizer")["step"] == 3
    header_file(tmp_path / "optimizer.safetensors", b"{}", length=2**40)
    with pytest.raises(
        UnsafeFileError, match=r"optimizer.safetensors: safetensors header claims 1,099,511,627,776"
    ):
        load_state(tmp_path, "optimizer")


def test_a_valid_header_passes():
    import tempfile  # noqa: E401

    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        save_file({"a": torch.zeros(3), "b": torch.ones(2, 2)}, f"{tmp}/ok.safetensors")
        header = check_safetensors(f"{tmp}/ok.safetensors")
    assert header["a"]["shape"] == [3] and header["b"]["shape"] == [2, 2]


@pytest.fixture
def canary_module(tmp_path, monkeypatch):
    """A module that, when imported, creates the file `canary`."""
    (tmp_path / "evil_peft_canary.py").write_text(f"open({str(tmp_path / 'canary')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "canary"
    sys.modules.pop("evil_peft_canary", None)


REMOTE_CODE = {
    "trust_remote_code": (
        {"trust_remote_code": True},
        "sets trust_remote_code=True: a file never switches remote code on",
    ),
    "auto_map": ({"auto_map": {"AutoModel": "evil_peft_canary.Model"}}, "sets auto_map="),
    "auto_mapping": (
        {"auto_mapping": {"base_model_class": "Model", "parent_library": "evil_peft_canary"}},
        "auto_mapping.parent_library='evil_peft_canary' would import a module outside transformers, peft",
    ),
    "unregistered peft_type": (
        {"peft_type": "EVIL_CANARY"},
        "peft_type='EVIL_CANARY' is not a registered peft method",
    ),
}


@pytest.mark.parametrize("case", list(REMOTE_CODE))
def test_adapter_config_that_would_load_code_is_refused(case, guard_run, tmp_path, canary_module, capsys):
    change, expected = REMOTE_CODE[case]
    adapter = shutil.copytree(guard_run / "adapter", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | change))
    with pytest.raises(UnsafeFileError) as err:
        load_classifier(adapter)
    assert expected in str(err.value)
    assert main(["export", str(adapter), "--adapter", "--output", str(tmp_path / "export")]) == 2
    assert expected in capsys.readouterr().err
    assert not canary_module.exists() and "evil_peft_canary" not in sys.modules
    assert not (tmp_path / "export").exists()


def test_a_base_model_file_never_switches_trust_remote_code_on(
    guard_run, tiny_models, tmp_path, canary_module
):
    base = shutil.copytree(tiny_models["bert"], tmp_path / "other" / "bert")
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil_peft_canary.Model"}
    config["trust_remote_code"] = True
    (base / "config.json").write_text(json.dumps(config))
    shutil.copy(canary_module.parent / "evil_peft_canary.py", base / "evil_peft_canary.py")
    classifier = load_classifier(guard_run, device="cpu", base_model=str(base))
    assert classifier.predict("good film").label in ("negative", "positive")
    assert not canary_module.exists() and "evil_peft_canary" not in sys.modules
