"""Export of generative runs on tiny T5 (seq2seq) and LLaMA (causal-lm) models: standalone adapters that
plain peft loads and that generate the run's tokens, merged models (LoRA, DoRA, rsLoRA, IA3, QLoRA) that
plain transformers loads with the run's logits, refusals that leave nothing behind, cards, push."""

import json
import re

import pytest
import tiny
import torch
import yaml
from conftest import WORD
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM, PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from peftkit import merge
from peftkit.api import finetune
from peftkit.card import PLACEHOLDER
from peftkit.cli import main
from peftkit.export import ExportError, export_model
from peftkit.generation import load_generator, prompt_ids

# name -> (family, task, adapter fields, data fields)
RUNS = {
    "t5-lora": ("t5", "seq2seq", {"method": "lora", "lora_dropout": 0.0}, {"label_words": ["bad", "good"]}),
    "t5-ia3": ("t5", "seq2seq", {"method": "ia3"}, {"target_column": "words"}),
    "t5-bottleneck": ("t5", "seq2seq", {"method": "bottleneck"}, {"target_column": "words"}),
    "llama-lora": ("llama", "causal-lm", {"method": "lora", "lora_dropout": 0.0}, {}),
    "llama-dora": ("llama", "causal-lm", {"method": "lora", "use_dora": True, "lora_dropout": 0.0}, {}),
    "llama-rslora": ("llama", "causal-lm", {"method": "lora", "use_rslora": True, "lora_dropout": 0.0}, {}),
    "llama-qlora": ("llama", "causal-lm", {"method": "qlora", "lora_dropout": 0.0}, {}),
    "llama-prefix": ("llama", "causal-lm", {"method": "prefix"}, {}),
}
AUTO = {"seq2seq": AutoModelForSeq2SeqLM, "causal-lm": AutoModelForCausalLM}
AUTO_PEFT = {"seq2seq": AutoPeftModelForSeq2SeqLM, "causal-lm": AutoPeftModelForCausalLM}
TEXTS = [
    "the film was good and great",
    "awful plot and bad acting",
    "i love this wonderful story",
    "the music was poor and boring",
    "it is a fine product",
    "the service was terrible",
]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def run(generative_models, generative_files, tmp_path_factory):
    """name -> FinetuneResult (model in memory, run folder), trained on first use."""
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = finetune(_config(name, generative_models, generative_files, tmp_path_factory))
        return done[name]

    return get


def _config(name, models, files, tmp_path_factory) -> dict:
    family, task, adapter, data = RUNS[name]
    prefix = "chat_" if task == "causal-lm" else ""
    return {
        "task": task,
        "model": {"name_or_path": str(models[family]), "bnb_4bit_compute_dtype": "float32"},
        "adapter": adapter,
        "data": {
            "train_file": str(files[f"{prefix}train"]),
            "validation_file": str(files[f"{prefix}validation"]),
            "max_length": 48,
            **data,
        },
        "training": {
            "output_dir": str(tmp_path_factory.mktemp(name)), "max_steps": 10, "batch_size": 16,
            "learning_rate": 1e-2, "warmup_ratio": 0.0, "progress_bar": False, "seed": 0, "max_new_tokens": 4,
        },
    }  # fmt: skip


def family_task(name: str) -> tuple[str, str]:
    return RUNS[name][0], RUNS[name][1]


def prompts_of(result, name: str) -> list[list[int]]:
    """The prompts `peftkit generate` builds (one user turn in the chat template, or the text as is)."""
    metadata = json.loads((result.adapter_dir / "peftkit.json").read_text())
    return prompt_ids(result.tokenizer, metadata, TEXTS)


@torch.no_grad()
def greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy new tokens, one prompt at a time (no padding), by transformers' own `generate`."""
    outputs = []
    for prompt in prompts:
        out = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )[0].tolist()
        outputs.append(out[1:] if model.config.is_encoder_decoder else out[len(prompt) :])
    return outputs


@torch.no_grad()
def sequence_logits(model, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """Logits over every position of prompt + continuation (decoder positions for T5)."""
    if model.config.is_encoder_decoder:
        decoder = [model.config.decoder_start_token_id, *continuation]
        return model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([decoder])).logits[0]
    return model(input_ids=torch.tensor([prompt + continuation])).logits[0]


def max_diff(model_a, model_b, prompts, continuations, space: str = "logit") -> float:
    def values(model, p, c):
        logits = sequence_logits(model, p, c)
        return logits.softmax(-1) if space == "probability" else logits

    return max(
        (values(model_a, p, c) - values(model_b, p, c)).abs().max().item()
        for p, c in zip(prompts, continuations, strict=True)
    )


def assert_no_local_paths(folder, *paths):
    for file in folder.iterdir():
        text = file.read_bytes().decode("utf-8", errors="ignore")
        assert not any(str(p) in text for p in paths), f"{file.name} holds a local path"


# ---------------------------------------------------------------- standalone adapter


@pytest.mark.parametrize("name", ["t5-lora", "t5-ia3", "t5-bottleneck", "llama-lora"])
def test_adapter_export_loads_in_plain_peft_and_generates_the_runs_tokens(
    run, generative_models, tmp_path, monkeypatch, capsys, one_thread, name
):
    family, task = family_task(name)
    result = run(name)
    out = tmp_path / "export"
    assert main(["export", str(result.output_dir), "--adapter", "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["merge_check"] is None
    names = {p.name for p in out.iterdir()}
    expected_files = {"adapter_model.safetensors", "adapter_config.json", "peftkit.json", "README.md"}
    assert expected_files | {"tokenizer.json"} <= names and not any(
        n.endswith((".bin", ".pt")) for n in names
    )
    assert ("chat_template.jinja" in names) == (task == "causal-lm")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == family  # a local base: its folder name only
    assert config["task_type"] == {"seq2seq": "SEQ_2_SEQ_LM", "causal-lm": "CAUSAL_LM"}[task]
    assert_no_local_paths(out, generative_models[family].parent, result.output_dir)

    # plain peft: the Auto class loads the base named in adapter_config.json (here a folder in the cwd)
    monkeypatch.chdir(generative_models[family].parent)
    plain = AUTO_PEFT[task].from_pretrained(str(out)).eval()
    assert isinstance(plain, PeftModel)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = prompts_of(result, name)
    if task == "causal-lm":  # the saved chat template renders the prompts the run was evaluated on
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
            for t in TEXTS
        ]
        assert rendered == prompts
    else:
        assert tokenizer(TEXTS, truncation=True, max_length=48)["input_ids"] == prompts
    expected = greedy(result.model, prompts)
    assert greedy(plain, prompts) == expected
    assert max_diff(plain, result.model, prompts, expected) <= 1e-5
    base = AUTO[task].from_pretrained(generative_models[family])
    assert greedy(base, prompts) != expected  # the adapter changes what is generated: it did load


# ---------------------------------------------------------------- merged model


@pytest.mark.parametrize("name", ["t5-lora", "t5-ia3", "llama-lora", "llama-dora", "llama-rslora"])
def test_merged_export_equals_the_run_in_plain_transformers(
    run, generative_models, tmp_path, one_thread, name
):
    family, task = family_task(name)
    result = run(name)
    export = export_model(result.output_dir, tmp_path / "merged", merged=True, max_shard_size="20KB")
    check = export.merge_check
    assert (
        check["checked"] == "max |logit diff| <= 0.0001" and check["max_logit_diff"] <= merge.LOGIT_TOLERANCE
    )
    assert check["probe"].endswith("validation texts (validation.csv)" if task == "seq2seq" else
                                   "validation texts (chat_validation.csv)")  # fmt: skip
    assert check["texts"] == 32 and check["tokens"] >= 32 and check["same_generation_fraction"] == 1.0
    out = export.output_dir
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 1 and not list(out.glob("*.bin"))
    assert (out / "generation_config.json").is_file()
    assert ((out / "chat_template.jinja").is_file()) == (task == "causal-lm")
    assert_no_local_paths(out, generative_models[family].parent, result.output_dir)

    model = AUTO[task].from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id is not None
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert not any("lora_" in k or "ia3_" in k or "base_layer" in k for k in weight_map)
    base = AUTO[task].from_pretrained(generative_models[family]).state_dict()
    weights = model.state_dict()
    assert (
        max((weights[k] - base[k]).abs().max() for k in base if k in weights) > 1e-4
    )  # the merge changed them
    assert all(w.dtype == torch.float32 for w in weights.values())

    prompts = prompts_of(result, name)
    expected = greedy(result.model, prompts)
    assert greedy(model, prompts) == expected
    assert max_diff(model, result.model, prompts, expected) <= merge.LOGIT_TOLERANCE
    # peftkit generate reads the merged folder as well as the run, and answers the same
    assert load_generator(out, device="cpu").generate(TEXTS, max_new_tokens=NEW_TOKENS) == load_generator(
        result.output_dir, device="cpu"
    ).generate(TEXTS, max_new_tokens=NEW_TOKENS)


def test_qlora_causal_lm_merges_into_the_dequantized_base(run, generative_models, tmp_path, one_thread):
    result = run("llama-qlora")
    meta = json.loads((result.adapter_dir / "peftkit.json").read_text())
    assert meta["quantization"]["mode"] == "4bit"
    export = export_model(result.output_dir, tmp_path / "merged", merged=True)
    check = export.merge_check
    assert check["checked"] == "max |probability diff| <= 0.05"
    assert check["max_probability_diff"] <= merge.PROBABILITY_TOLERANCE
    config = json.loads((export.output_dir / "config.json").read_text())
    assert "quantization_config" not in config  # plain float32 weights, never merged into 4 bit
    merged = AutoModelForCausalLM.from_pretrained(export.output_dir).eval()
    assert all(w.dtype == torch.float32 for w in merged.state_dict().values())

    # against the model as trained (the adapter on the 4-bit base), in probability space
    prompts = prompts_of(result, "llama-qlora")
    expected = greedy(result.model, prompts)
    assert max_diff(merged, result.model, prompts, expected, "probability") <= merge.PROBABILITY_TOLERANCE
    assert greedy(merged, prompts) == expected

    # merged weight - LoRA update == the dequantized 4-bit weight (not the original full-precision one)
    path = generative_models["llama"]
    dequantized = tiny.dequantized_base(AutoModelForCausalLM, path, meta["quantization"], "lm_head")
    original = AutoModelForCausalLM.from_pretrained(path)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    layer = "model.layers.0.self_attn.q_proj"
    with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as f:
        a, b = (f.get_tensor(f"base_model.model.{layer}.lora_{m}.weight") for m in "AB")
    update = (b @ a) * (adapter_config["lora_alpha"] / adapter_config["r"])
    assert update.abs().max() > 1e-4  # trained
    weight = merged.get_submodule(layer).weight
    assert torch.allclose(weight - update, dequantized.get_submodule(layer).weight.float(), atol=1e-6)
    assert not torch.allclose(weight - update, original.get_submodule(layer).weight, atol=1e-3)


@pytest.mark.parametrize("name, method", [("t5-bottleneck", "bottleneck"), ("llama-prefix", "prefix")])
def test_non_mergeable_generative_adapter_is_refused_before_any_work(
    run, tmp_path, monkeypatch, capsys, one_thread, name, method
):
    source = run(name).output_dir
    for loader in ("load_model", "load_generative_model"):
        monkeypatch.setattr(merge, loader, lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ExportError, match=rf"cannot merge a '{method}' adapter.*Use --adapter"):
        export_model(source, tmp_path / "merged", merged=True)
    assert main(["export", str(source), "--merged", "--output", str(tmp_path / "cli")]) == 2
    assert "use --adapter" in capsys.readouterr().err.lower()
    assert list(tmp_path.iterdir()) == []


def test_failed_generative_merge_check_leaves_nothing(run, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(merge, "LOGIT_TOLERANCE", -1.0)
    with pytest.raises(
        ExportError, match=r"differs from the adapter model.*32 probe texts.*nothing was written"
    ):
        export_model(run("llama-lora").output_dir, tmp_path / "merged", merged=True)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- cards and push


def card_parts(folder) -> tuple[dict, str]:
    _, front, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.mark.parametrize(
    "name, merged", [("llama-lora", False), ("llama-lora", True), ("t5-lora", True), ("t5-ia3", False)]
)
def test_generative_card(run, generative_models, tmp_path, one_thread, name, merged):
    family, task = family_task(name)
    result = run(name)
    out = export_model(result.output_dir, tmp_path / "export", merged=merged).output_dir
    meta, body = card_parts(out)
    pipeline = {"seq2seq": "text2text-generation", "causal-lm": "text-generation"}[task]
    assert (meta["pipeline_tag"], meta["library_name"]) == (pipeline, "transformers" if merged else "peft")
    assert {"peftkit", RUNS[name][2]["method"], pipeline} <= set(meta["tags"])
    assert meta["metrics"] == ["exact_match", "rouge"]
    record = json.loads((result.output_dir / "run.json").read_text())["metrics"]["validation"]
    results = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert results == {
        "validation exact match": round(record["accuracy"], 4),
        "validation ROUGE-L": round(record["rouge_l"], 4),
    }
    assert meta["model-index"][0]["results"][0]["task"]["type"] == pipeline
    assert (
        f"| validation | {record['accuracy']:.4f} | {record['rouge_l']:.4f} | {record['loss']:.4f} | 32 |"
        in body
    )
    usage = AUTO[task].__name__ if merged else AUTO_PEFT[task].__name__
    assert f"{usage}.from_pretrained" in body and "peftkit generate" in body
    if task == "causal-lm":  # the prompt template, exactly as the tokenizer renders it
        assert "peftkit's `plain` chat template" in body
        tokenizer = AutoTokenizer.from_pretrained(out)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "{prompt}"}], add_generation_prompt=True, tokenize=False
        )
        assert rendered.startswith("<s>### Instruction:\n") and f"```text\n{rendered}\n```" in body
        assert json.dumps(rendered) in body
        assert "- columns: prompt `prompt`, response `response`" in body
    elif RUNS[name][3].get("label_words"):
        assert "## Input format" in body and "one of 2 label words: `bad`, `good`" in body
    else:
        assert "target `words`" in body
    if merged:
        assert "the same greedy continuation on 100% of them" in body
    assert "classifier" not in body.lower()
    card = (out / "README.md").read_text()
    assert not re.search(r"(?<![\w.])/(tmp|home|work|root|Users)/", card), "a local path in the card"
    assert_no_local_paths(out, generative_models[family].parent, result.output_dir, tmp_path)


@pytest.mark.parametrize("merged", [False, True])
def test_card_usage_snippet_answers_like_the_run(
    run, generative_models, tmp_path, monkeypatch, capsys, one_thread, merged
):
    """The card's plain peft / transformers snippet, run as written, prints what `peftkit generate` prints."""
    result = run("llama-lora")
    out = export_model(result.output_dir, tmp_path / "export", merged=merged).output_dir
    _, body = card_parts(out)
    snippet = re.search(r"## How to use\n\n[^\n]*\n\n```python\n(.*?)```", body, re.S).group(1)
    text = TEXTS[1]
    code = snippet.replace(PLACEHOLDER, str(out)).replace("some instruction", text)
    monkeypatch.chdir(generative_models["llama"].parent)  # the adapter's base, by its folder name
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    expected = load_generator(result.output_dir, device="cpu").generate([text], max_new_tokens=32)[0]
    assert printed == expected and printed.split()[0] in WORD.values()  # the run learnt to answer a word


def test_push_dry_run_sends_every_file_of_a_generative_export(run, tmp_path, capsys, one_thread):
    source = run("llama-lora").output_dir
    for merged in (False, True):
        out = export_model(
            source, tmp_path / f"export-{merged}", merged=merged, max_shard_size="20KB"
        ).output_dir
        assert main(["push", str(out), "--repo-id", "someone/tiny-chat", "--dry-run"]) == 0
        files = json.loads(capsys.readouterr().out)["files"]
        assert files == sorted(
            p.name for p in out.iterdir()
        )  # nothing left behind, the chat template included
        assert "chat_template.jinja" in files
        if merged:
            assert {"config.json", "generation_config.json", "model.safetensors.index.json"} <= set(files)
            assert (
                sum(f.startswith("model-") for f in files) == len(list(out.glob("model-*.safetensors"))) > 1
            )
    # a run folder is exported as an adapter first
    assert main(["push", str(source), "--repo-id", "someone/tiny-chat", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "peftkit.json",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
