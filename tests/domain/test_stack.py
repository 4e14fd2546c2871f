"""`domain.dapt_mode: stack`: the DAPT adapter frozen under the task adapter, both active, saved and merged together."""

import copy
import json
import shutil

import pytest
import tiny
import torch
from conftest import tiny_run_config, write_csv
from safetensors.torch import load_file, save_file

from peftkit.adapters import apply_adapter
from peftkit.adapters.stack import STACKED, TASK
from peftkit.api import finetune
from peftkit.cli import main
from peftkit.config import ConfigError, RunConfig, config_from_dict, validate
from peftkit.domain.pretrain import classifier_weights, continued_pretraining, stack_domain_adapter
from peftkit.export import ExportError, export_model
from peftkit.merge import LOGIT_TOLERANCE, combine_adapters
from peftkit.model import load_model, load_tokenizer
from peftkit.predict import AdapterFolderError, load_classifier

TARGET_DOMAIN = ["the food was really good", "the service was very bad", "i love this product"] * 16


def pretrained_adapter(model_dir, out):
    """A short continued pre-training run (not merged): its adapter folder."""
    config = RunConfig()
    config.model.name_or_path = str(model_dir)
    config.adapter.lora_dropout, config.data.max_length = 0.0, 32
    t = config.training
    t.batch_size, t.log_every_steps, t.progress_bar, t.warmup_ratio, t.seed = 16, 5, False, 0.0, 0
    config.domain.pretrain_steps, config.domain.pretrain_learning_rate = 5, 5e-2
    tokenizer = load_tokenizer(config.model)
    result = continued_pretraining(config, TARGET_DOMAIN, tokenizer, out, merge=False)
    assert result.base_dir is None and not (out / "base").exists()
    return config, tokenizer, result.adapter_dir


def stacked_classifier(family, tiny_models, tmp_path, use_dora=False):
    config, tokenizer, adapter_dir = pretrained_adapter(tiny_models[family], tmp_path / "dapt")
    config.adapter.use_dora = use_dora  # the task adapter's
    loaded = load_model(config.model, ["negative", "positive"], tokenizer, config.adapter)
    model = apply_adapter(loaded.model, config.adapter, loaded.family)
    stack_domain_adapter(model, adapter_dir)
    batch = tokenizer(["the food was good", "i hate this product"], padding=True, return_tensors="pt")
    return model, adapter_dir, dict(batch)


def named(key: str) -> str:
    """A weight's key as peft saves it -> its parameter name in the stacked model."""
    return key.replace(".lora_A.", f".lora_A.{STACKED}.").replace(".lora_B.", f".lora_B.{STACKED}.")


def lora_state(model, name):
    return {
        k: v.detach().clone()
        for k, v in model.named_parameters()
        if f".lora_A.{name}." in k or f".lora_B.{name}." in k
    }


@pytest.mark.parametrize(
    ("family", "use_dora"),
    [("bert", False), ("t5", False), ("llama", False), ("bert", True), ("llama", True)],
)
def test_stacked_step_trains_the_task_adapter_and_keeps_the_domain_adapter(
    family, use_dora, tiny_models, tmp_path, one_thread
):
    model, adapter_dir, batch = stacked_classifier(family, tiny_models, tmp_path, use_dora)
    assert model.active_adapters == [TASK, STACKED]
    _, mapped = classifier_weights(model.get_base_model(), adapter_dir)
    domain = lora_state(model, STACKED)
    assert len(domain) == len(mapped) > 0  # every target module got the pre-trained weights
    assert all(torch.equal(domain[named(key)], value) for key, value in mapped.items())
    assert not any(p.requires_grad for k, p in model.named_parameters() if f".{STACKED}." in k)
    task = lora_state(model, TASK)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    optimizer.step()
    after = lora_state(model, STACKED)
    assert all(torch.equal(after[k], domain[k]) for k in domain)  # byte-identical
    changed = [k for k, v in lora_state(model, TASK).items() if not torch.equal(v, task[k])]
    assert any(".lora_B." in k for k in changed)

    model.eval()
    with torch.no_grad():
        both = model(**batch).logits
        merged = copy.deepcopy(model).merge_and_unload()(**batch).logits
        model.base_model.set_adapter(TASK)
        task_only = model(**batch).logits
    assert (both - merged).abs().max() < 1e-5  # base + both LoRA updates
    assert (both - task_only).abs().max() > 1e-4  # the domain adapter takes part


def test_merge_adds_both_lora_updates(tiny_models, tmp_path, one_thread):
    model, _, batch = stacked_classifier("bert", tiny_models, tmp_path)
    for p in (p for k, p in model.named_parameters() if f".lora_B.{TASK}." in k):
        torch.nn.init.normal_(p, std=0.02)  # a trained-looking task adapter
    query = "layer.0.attention.self.query"
    layer = next(m for n, m in model.named_modules() if n.endswith(query))
    expected = layer.base_layer.weight.detach().clone()
    for name in (TASK, STACKED):
        delta = layer.lora_B[name].weight @ layer.lora_A[name].weight * layer.scaling[name]
        assert delta.abs().max() > 0
        expected += delta.detach()
    merged = copy.deepcopy(model).merge_and_unload()
    weight = next(m.weight for n, m in merged.named_modules() if n.endswith(query))
    assert torch.allclose(weight, expected, atol=1e-6)


@pytest.fixture(scope="module")
def target_file(tmp_path_factory):
    rows = [{"text": r["text"] + " product service"} for r in tiny.toy_sentiment(96, seed=9)]
    return write_csv(tmp_path_factory.mktemp("target") / "target.csv", rows)


@pytest.fixture(scope="module")
def stacked_run(tiny_models, toy_files, tmp_path_factory, target_file):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stack") / "run"
    config = tiny_run_config(tiny_models["bert"], toy_files, out)
    config["domain"] = {
        "method": "dapt", "dapt_mode": "stack", "target_file": str(target_file), "pretrain_steps": 10,
        "pretrain_learning_rate": 5e-2,
    }  # fmt: skip
    return finetune(config)


def test_dapt_stack_trains_saves_both_adapters_and_reloads(stacked_run):
    result, out = stacked_run, stacked_run.output_dir
    domain = result.metrics["domain"]
    assert domain["dapt_mode"] == "stack" and len(domain["pretrain_losses"]) == 2
    assert not (out / "dapt" / "base").exists()
    assert result.metrics["test"]["accuracy"] > 0.75
    assert json.loads((out / "adapter" / "peftkit.json").read_text())["stacked"] == STACKED
    assert (out / "adapter" / STACKED / "adapter_model.safetensors").is_file()
    # the frozen domain adapter after task training is the pre-trained one, byte for byte
    _, mapped = classifier_weights(result.model.get_base_model(), out / "dapt" / "adapter")
    trained = result.model.state_dict()
    assert all(torch.equal(trained[named(key)], value) for key, value in mapped.items())
    texts = ["the food was good", "i hate this product", "really awful service", "great movie"]
    classifier = load_classifier(out, device="cpu")
    assert classifier.model.active_adapters == [TASK, STACKED]
    reference = result.model.to("cpu")
    batch = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch).logits
    assert torch.allclose(classifier.logits(texts), expected, atol=1e-6)
    assert classifier.predict(texts[0]).label == classifier.labels[int(expected[0].argmax())]
    with classifier.using(TASK):  # re-activating the task adapter keeps the domain adapter under it
        assert classifier.model.active_adapters == [TASK, STACKED]
    with pytest.raises(AdapterFolderError, match="stacks its task adapter"):
        classifier.load_adapter(out, "other")
    with pytest.raises(ExportError, match="stacked adapters do not combine"):
        combine_adapters([out, out], [0.5, 0.5], out.parent / "combined")


def test_cli_eval_and_predict_use_both_adapters(stacked_run, toy_files, capsys):
    out = stacked_run.output_dir
    assert main(["eval", str(out), "--data", str(toy_files["test"])]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["samples"] == 80
    assert scored["accuracy"] == pytest.approx(stacked_run.metrics["test"]["accuracy"], abs=1e-6)
    assert main(["predict", str(out), "i hate this product"]) == 0
    line = json.loads(capsys.readouterr().out)
    reference = stacked_run.model.to("cpu")
    batch = load_classifier(out, device="cpu").tokenizer(["i hate this product"], return_tensors="pt")
    with torch.no_grad():
        probabilities = reference(**batch).logits.softmax(-1)[0]
    assert [line["probabilities"][k] for k in ("negative", "positive")] == pytest.approx(
        probabilities.tolist()
    )


def test_dapt_stack_exports_merged_and_refuses_adapter_export(stacked_run, tmp_path):
    out = stacked_run.output_dir
    exported = export_model(out, tmp_path / "merged", merged=True)
    assert exported.merge_check["max_logit_diff"] <= LOGIT_TOLERANCE
    texts = ["the food was good", "i hate this product", "really awful service"]
    merged, stacked = load_classifier(tmp_path / "merged", device="cpu"), load_classifier(out, device="cpu")
    assert (merged.logits(texts) - stacked.logits(texts)).abs().max() <= LOGIT_TOLERANCE
    with pytest.raises(ExportError, match="stacked on a domain adapter.*--merged"):
        export_model(out, tmp_path / "adapter", merged=False)
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("domain", "adapter", "message"),
    [
        ({"method": "coral", "dapt_mode": "stack"}, {}, "dapt_mode: stack applies to domain.method: dapt"),
        ({"method": "none", "dapt_mode": "stack"}, {}, "dapt_mode: stack applies to domain.method: dapt"),
        ({"method": "dapt", "dapt_mode": "stack"}, {"method": "ia3"}, "adapter.method must be lora"),
        ({"method": "dapt", "dapt_mode": "stack"}, {"method": "bottleneck"}, "adapter.method must be lora"),
        (
            {"method": "dapt", "dapt_mode": "stack", "stack_adapter": "x"},
            {},
            "stack_adapter loads an existing",
        ),
        ({"method": "none", "stack_adapter": "missing"}, {}, "holds no adapter_config.json"),
    ],
)
def test_bad_stack_options_are_refused(domain, adapter, message, tmp_path):
    values = {
        "adapter": {"method": "lora", **adapter},
        "data": {"train_file": "train.csv"},
        "domain": {"target_file": "t.csv", **domain},
        "training": {"output_dir": str(tmp_path / "run")},
    }
    with pytest.raises(ConfigError, match=message):
        finetune(values)
    assert not (tmp_path / "run").exists()


def test_8bit_stack_and_qlora_merge_are_refused():
    values = {
        "adapter": {"method": "lora"},
        "data": {"train_file": "t.csv"},
        "model": {"quantization": "8bit"},
    }
    values["domain"] = {"method": "dapt", "dapt_mode": "stack", "target_file": "t.csv"}
    with pytest.raises(ConfigError, match="unquantized and 4-bit bases"):
        validate(config_from_dict(values))
    values["adapter"], values["model"], values["domain"]["dapt_mode"] = {"method": "qlora"}, {}, "merge"
    with pytest.raises(ConfigError, match="or domain.dapt_mode: stack"):
        validate(config_from_dict(values))


def test_domain_adapter_that_does_not_fit_is_refused(tiny_models, tmp_path, one_thread):
    config, tokenizer, adapter_dir = pretrained_adapter(tiny_models["bert"], tmp_path / "dapt")
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    dropped = next(k for k in weights if ".lora_B." in k)
    renamed = {k.replace("encoder.layer.0.", "encoder.layer.9."): v for k, v in weights.items()}
    for name, broken, message in (
        ("missing", {k: v for k, v in weights.items() if k != dropped}, "1 of its weights are missing"),
        ("renamed", renamed, "no counterpart in the classifier"),
    ):
        folder = tmp_path / name
        shutil.copytree(adapter_dir, folder)
        save_file(broken, folder / "adapter_model.safetensors")
        loaded = load_model(config.model, ["negative", "positive"], tokenizer, config.adapter)
        model = apply_adapter(loaded.model, config.adapter, loaded.family)
        with pytest.raises(ValueError, match=message):
            stack_domain_adapter(model, folder)


def test_qlora_task_adapter_stacks_on_the_4bit_base_and_merges(
    tiny_models, toy_files, target_file, tmp_path, one_thread
):
    config = tiny_run_config(tiny_models["llama"], toy_files, tmp_path / "run", max_steps=4)
    config["adapter"]["method"] = "qlora"
    config["domain"] = {
        "method": "dapt", "dapt_mode": "stack", "target_file": str(target_file), "pretrain_steps": 5,
        "pretrain_learning_rate": 5e-2,
    }  # fmt: skip
    result = finetune(config)
    assert getattr(result.model.get_base_model(), "is_quantized", False)
    assert result.model.active_adapters == [TASK, STACKED]
    _, mapped = classifier_weights(result.model.get_base_model(), tmp_path / "run" / "dapt" / "adapter")
    trained = result.model.state_dict()
    assert all(torch.equal(trained[named(key)].cpu(), value) for key, value in mapped.items())
    assert any(v.abs().max() > 0 for k, v in trained.items() if f".lora_B.{TASK}." in k)
    meta = json.loads((tmp_path / "run" / "adapter" / "peftkit.json").read_text())
    assert meta["stacked"] == STACKED and meta["quantization"]["mode"] == "4bit"
    check = export_model(tmp_path / "run", tmp_path / "merged", merged=True).merge_check
    assert check["max_probability_diff"] <= 0.05 and check["same_label_fraction"] == 1.0
