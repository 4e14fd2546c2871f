"""The generative tasks on tiny T5 and LLaMA models: training lowers the loss, packing keeps the loss,
evaluation by generation, saving and generating again, and the refusals of config validation."""

import json
import shutil
from pathlib import Path

import pytest
import tiny
import torch
from conftest import WORD

from peftkit.adapters import apply_adapter
from peftkit.api import build_config, finetune
from peftkit.cli import main
from peftkit.config import AdapterConfig, ConfigError, ModelConfig
from peftkit.data import DataError
from peftkit.families import FAMILIES
from peftkit.generation import load_generator
from peftkit.generative import collator, load_generative_data, without_cache
from peftkit.model import load_generative_model
from peftkit.predict import AdapterFolderError, load_classifier
from peftkit.templates import prompt_response_messages, render_chat, use_chat_template


def _training(output_dir, **extra) -> dict:
    return {
        "output_dir": str(output_dir), "num_epochs": 4, "batch_size": 16, "learning_rate": 1e-2,
        "warmup_ratio": 0.0, "log_every_steps": 5, "progress_bar": False, "seed": 0, "max_new_tokens": 4,
        **extra,
    }  # fmt: skip


def _seq2seq_config(model, files, output_dir, method="lora", **data) -> dict:
    return {
        "task": "seq2seq",
        "model": {"name_or_path": str(model)},
        "adapter": {"method": method, "lora_dropout": 0.0} if method == "lora" else {"method": method},
        "data": {"train_file": str(files["train"]), "validation_file": str(files["validation"]), **data},
        "training": _training(output_dir),
    }


def _causal_config(model, files, output_dir, method="qlora", **data) -> dict:
    return {
        "task": "causal-lm",
        "model": {"name_or_path": str(model), "bnb_4bit_compute_dtype": "float32"},
        "adapter": {"method": method},
        "data": {
            "train_file": str(files["chat_train"]),
            "validation_file": str(files["chat_validation"]),
            "max_length": 48,
            **data,
        },  # fmt: skip
        "training": _training(output_dir),
    }


def test_seq2seq_classification_as_generation_learns(
    generative_models, generative_files, tmp_path, one_thread
):
    config = _seq2seq_config(generative_models["t5"], generative_files, tmp_path, label_words=["bad", "good"])
    result = finetune(config)
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    validation = result.metrics["validation"]
    assert validation["accuracy"] >= 0.8, validation  # generated label word == reference word; chance 0.5
    assert result.labels == ["bad", "good"]
    saved = json.loads((result.adapter_dir / "peftkit.json").read_text())
    assert saved["task"] == "seq2seq"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["metrics"]["validation"]["rouge_l"] == pytest.approx(validation["rouge_l"])


@pytest.mark.parametrize(
    "method, learning_rate, ratio",
    [("qlora", 1e-2, 0.9), ("bottleneck", 1e-2, 0.9), ("prefix", 1e-1, 0.9), ("prompt", 1e-1, 0.95)],
    # prompt: 640 numbers train; qlora: the T5 encoder and decoder in 4-bit, the LM head kept out
)
def test_free_seq2seq_lowers_the_loss(
    method, learning_rate, ratio, generative_models, generative_files, tmp_path, one_thread
):
    config = _seq2seq_config(
        generative_models["t5"], generative_files, tmp_path, method, target_column="words"
    )
    config["training"]["learning_rate"] = learning_rate  # prefix and prompt tuning want a high rate
    result = finetune(config)
    if method == "qlora":
        # T5's feed-forward output `wo` stays float32: transformers keeps it out of quantization
        names = (".q", ".k", ".v", ".wi")
        layers = {type(m).__name__ for n, m in result.model.named_modules() if n.endswith(names)}
        assert layers == {"Linear4bit"}  # the T5 encoder and decoder in 4-bit (peft's LoRA wrapper of one)
        assert type(result.model.get_output_embeddings()).__name__ == "Linear"  # the LM head kept out
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < ratio * losses[0], losses
    assert 0.0 <= result.metrics["validation"]["rouge_l"] <= 1.0
    assert result.metrics["validation"]["samples"] == 32


@pytest.mark.parametrize("method, packing", [("qlora", True), ("lora", False), ("prefix", False)])
def test_causal_lm_lowers_the_loss(
    method, packing, generative_models, generative_files, tmp_path, one_thread
):
    config = _causal_config(generative_models["llama"], generative_files, tmp_path, method, packing=packing)
    result = finetune(config)
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["train"]["samples"] == 4 * 160  # packed rows still count their examples
    if method == "lora":  # the others learn slower on this tiny model: the loss check is their contract here
        assert result.metrics["validation"]["accuracy"] >= 0.75, result.metrics["validation"]


def test_saved_causal_lm_generates_the_same_from_the_cli(
    generative_models, generative_files, tmp_path, one_thread, capsys
):
    config = _causal_config(generative_models["llama"], generative_files, tmp_path, "lora")
    result = finetune(config)
    texts = ["the film was good and great", "awful plot and bad acting"]
    prompts = load_generator(tmp_path).prompts(texts)
    expected = result.tokenizer.batch_decode(
        [result.model.generate(input_ids=torch.tensor([p]), max_new_tokens=4, do_sample=False)[0, len(p) :]
         for p in prompts],
        skip_special_tokens=True,
    )  # fmt: skip
    assert main(["generate", str(tmp_path), *texts, "--max-new-tokens", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["generation"] for line in lines] == [e.strip() for e in expected]
    assert all(line["generation"] in ("good", "bad") for line in lines), lines


# ---------------------------------------------------------------- packing


def _rows(tokenizer, n=6):
    use_chat_template(tokenizer, "plain")
    rows = tiny.toy_sentiment(n, seed=4)
    chats = [
        render_chat(tokenizer, prompt_response_messages(r["text"], WORD[r["label"]] + " film")) for r in rows
    ]
    return [{"input_ids": c.input_ids, "labels": c.labels} for c in chats]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attention, generative_models, one_thread):
    path = generative_models["llama"]
    tokenizer = tiny.build_tokenizer("llama")
    tokenizer.pad_token = tokenizer.eos_token
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention)
    without_cache(model)  # as finetune does
    adapter = AdapterConfig(method="lora", init_lora_weights="gaussian")  # B != 0: the adapter acts
    with torch.no_grad():
        model = apply_adapter(model, adapter, FAMILIES["llama"], task="causal-lm")
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.eval()
    rows = _rows(tokenizer)
    unpacked = collator(tokenizer, packing=False)(rows)
    packed = collator(tokenizer, packing=True)(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    assert "attention_mask" not in packed and packed["position_ids"].eq(0).sum() == len(rows)
    with torch.no_grad():
        loss_unpacked = model(**unpacked).loss
        loss_packed = model(**packed).loss
        # control: one position sequence over the whole row lets examples attend to each other
        crossed = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
        loss_crossed = model(**crossed).loss
    assert loss_packed.item() == pytest.approx(loss_unpacked.item(), abs=1e-4)
    assert abs(loss_crossed.item() - loss_unpacked.item()) > 1e-3


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "task, section, values, match",
    [
        ("classification", "data", {"packing": True}, "data.packing.*causal-lm"),
        ("classification", "data", {"target_column": "words"}, "data.target_column.*seq2seq"),
        ("seq2seq", "data", {"packing": True}, "data.packing"),
        ("causal-lm", "data", {"packing": True}, None),
        ("causal-lm", "adapter", {"method": "prefix"}, None),
        ("seq2seq", "adapter", {"method": "features"}, "features.*classification"),
        ("seq2seq", "data", {"label_words": ["a", "a"]}, "distinct"),
        ("seq2seq", "data", {"label_words": ["a", "b"], "target_column": "words"}, "no data.target_column"),
        ("causal-lm", "data", {"chat_template": "vicuna"}, "vicuna"),
        ("causal-lm", "training", {"max_new_tokens": 0}, "max_new_tokens"),
        ("causal-lm", "training", {"metric_for_best": "macro_f1"}, "macro_f1"),
        ("seq2seq", "data", {"k_shot": 4}, "k_shot.*classification"),
    ],
)
def test_config_validation(task, section, values, match):
    config = {"task": task, "data": {"train_file": "x.csv"}}
    config[section] = {**config.get(section, {}), **values}
    if match is None:
        build_config(config)
        return
    with pytest.raises(ConfigError, match=match):
        build_config(config)


def test_packing_with_prefix_is_refused():
    with pytest.raises(ConfigError, match="packing.*prefix"):
        build_config(
            {
                "task": "causal-lm",
                "adapter": {"method": "prefix"},
                "data": {"train_file": "x", "packing": True},
            }
        )


def test_architecture_that_does_not_fit_the_task_is_refused_before_loading(generative_models):
    tokenizer = tiny.build_tokenizer("t5")
    with pytest.raises(ConfigError, match="causal-lm.*decoder-only.*'t5'.*task: seq2seq"):
        load_generative_model(ModelConfig(name_or_path=str(generative_models["t5"])), "causal-lm", tokenizer)


# ---------------------------------------------------------------- shipped recipes and data

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*.yaml"))
GENERATIVE_RECIPES = [p for p in RECIPES if p.parent.name in ("seq2seq", "causal_lm")]
# Recipes whose data ship with peftkit; the others (SST-2 words for SmolLM2) run in their benchmark's test
BUNDLED_DATA_RECIPES = [p for p in GENERATIVE_RECIPES if "train_file: bundled:" in p.read_text()]


def test_generative_recipes_found():
    assert len(GENERATIVE_RECIPES) >= 5, GENERATIVE_RECIPES


@pytest.mark.parametrize("recipe", BUNDLED_DATA_RECIPES, ids=lambda p: p.name)
def test_generative_recipe_runs_on_its_bundled_data(recipe, generative_models, tmp_path, one_thread):
    """Each recipe, with a tiny model of its family: bundled data read, rendered, trained 2 steps, evaluated."""
    family = "t5" if recipe.parent.name == "seq2seq" else "llama"
    overrides = [
        f"model.name_or_path={generative_models[family]}", f"training.output_dir={tmp_path}",
        "training.max_steps=2", "training.max_new_tokens=2", "training.progress_bar=false",
    ]  # fmt: skip
    if family == "llama":
        overrides.append("model.bnb_4bit_compute_dtype=float32")
    result = finetune(recipe, overrides)
    assert result.metrics["train"]["steps"] == 2
    assert result.metrics["test"]["samples"] == 12 or recipe.name == "lora_t5_tickets.yaml"
    assert all(0.0 <= result.metrics[s]["rouge_l"] <= 1.0 for s in ("validation", "test"))


def test_classifier_commands_refuse_a_generative_run(
    generative_models, generative_files, tmp_path, one_thread, capsys
):
    config = _seq2seq_config(generative_models["t5"], generative_files, tmp_path, label_words=["bad", "good"])
    config["training"]["max_steps"] = 1
    finetune(config)
    assert main(["predict", str(tmp_path), "good film"]) == 2  # usage error, with the reason on stderr
    assert "trained for task 'seq2seq', not classification: use peftkit generate" in capsys.readouterr().err
    with pytest.raises(AdapterFolderError, match="seq2seq.*peftkit generate"):
        load_classifier(tmp_path)
    # a merged export is a plain transformers folder: refused too, not loaded as a classifier
    merged = tmp_path / "merged"
    assert main(["export", str(tmp_path), "--merged", "--output", str(merged)]) == 0
    with pytest.raises(AdapterFolderError, match="seq2seq.*peftkit generate"):
        load_classifier(merged)


def test_chat_messages_column_from_jsonl(tmp_path):
    chats = [
        [
            {"role": "system", "content": "be very good"},
            {"role": "user", "content": f"the {word} movie"},
            {"role": "assistant", "content": word},
            {"role": "user", "content": "and the plot"},
            {"role": "assistant", "content": f"{word} plot"},
        ]
        for word in ("good", "bad", "great", "awful")
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    config = build_config(
        {
            "task": "causal-lm",
            "data": {"train_file": str(path), "validation_file": str(path), "messages_column": "messages"},
        }
    )
    tokenizer = tiny.build_tokenizer("llama")
    data = load_generative_data(config, tokenizer)
    first = data.rows["train"][0]
    eos = tokenizer.eos_token_id
    trained = [t for t in first["labels"] if t != -100]
    word = tokenizer.decode(trained[0])
    assert trained == tokenizer(f"{word}", add_special_tokens=False)["input_ids"] + [eos] + tokenizer(
        f"{word} plot", add_special_tokens=False
    )["input_ids"] + [eos]
    assert sorted(data.generation["validation"].references) == sorted(
        f"{w} plot" for w in ("good", "bad", "great", "awful")
    )


def test_missing_chat_columns_are_a_data_error(generative_files):
    config = build_config(
        {
            "task": "causal-lm",
            "data": {"train_file": str(generative_files["train"]), "response_column": "answer"},
        }
    )
    with pytest.raises(DataError, match="no column 'prompt'"):
        load_generative_data(config, tiny.build_tokenizer("llama"))


def test_resumed_causal_lm_run_ends_with_the_same_adapter(
    generative_models, generative_files, tmp_path, one_thread, caplog
):
    from safetensors.torch import load_file

    config = _causal_config(generative_models["llama"], generative_files, tmp_path, "lora", packing=True)
    config["training"] |= {"max_steps": 4, "save_every_steps": 2, "save_total_limit": 5, "log_every_steps": 1}
    whole = finetune(config)
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    for path in (tmp_path / "checkpoints").glob("step-4"):
        shutil.rmtree(path)  # as if the run had stopped after step 2
    config["training"]["resume"] = "auto"
    with caplog.at_level("INFO", logger="peftkit.checkpoint"):
        resumed = finetune(config)
    assert "step-2: step 2" in caplog.text  # it did resume
    assert resumed.metrics["train"]["losses"] == whole.metrics["train"]["losses"]
    again = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
