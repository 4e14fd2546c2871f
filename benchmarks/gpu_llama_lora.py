"""GPU benchmark: peftkit vs transformers `Trainer` + peft on a ~1.1B LLaMA-class classifier.

The machine that runs this has no internet, so the model is built from a config
(TinyLlama-1.1B shape: hidden 2048, 22 layers, GQA 32/4 heads, vocab 32000) with
random weights, saved once in bf16, and both systems load that folder. Data:
synthetic texts of 64-1024 tokens (word-level tokenizer built here), two labels.
Accuracy means nothing with random weights; this measures speed and memory.

Systems, each run in its own subprocess, alternated, medians reported:
- `trainer`: what the tutorials write: bf16 weights, `bf16=True`, `DataCollatorWithPadding`,
  the Trainer's defaults otherwise (random sampler, torch AdamW).
- `trainer-tuned`: plus length grouping and `pad_to_multiple_of=8`.
- `peftkit`: its defaults on GPU (bf16 autocast, length grouping, pad to x8, fused AdamW).
Methods: `lora` (r=16 on all attention/MLP linears) and `qlora` (the same on an NF4 base).

tokens/s counts real (non-pad) tokens. MFU uses the 6*N*tokens convention
(PaLM appendix B; N = total parameters) over the GPU's dense bf16 peak; LoRA skips
the frozen weights' gradients, so the hardware does ~4N per token: MFU x 2/3.

    python benchmarks/gpu_llama_lora.py --workdir /tmp/bench --repeats 2
    python benchmarks/gpu_llama_lora.py --workdir /tmp/bench --tiny   # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# ---------------------------------------------------------------- model and data


def build_assets(workdir: Path, tiny: bool, examples: int, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    model_dir = workdir / "model"
    if (model_dir / "config.json").is_file():
        return
    words = [f"w{i}" for i in range(32000 - 3)]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=2048
    )
    shape = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        if tiny
        else dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
        )
    )
    config = LlamaConfig(vocab_size=len(vocab), max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, num_labels=2, **shape)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(seed)
    low, high = (8, 64) if tiny else (64, 1024)
    with (workdir / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(examples):
            n = rng.randint(low, high)
            writer.writerow([" ".join(rng.choice(words) for _ in range(n)), i % 2])


def real_tokens(workdir: Path) -> int:
    with (workdir / "train.csv").open() as f:
        return sum(len(row["text"].split()) + 1 for row in csv.DictReader(f))  # + BOS


# ---------------------------------------------------------------- systems


def run_trainer(args, tuned: bool) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    model_dir = str(Path(args.workdir) / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    data = load_dataset("csv", data_files=str(Path(args.workdir) / "train.csv"), split="train")
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=2048), batched=True)
    data = data.remove_columns(["text"])
    quant = None
    if args.method == "qlora":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["score"])  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.bfloat16, quantization_config=quant, num_labels=2
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=TARGETS, **LORA))
    training_args = TrainingArguments(
        output_dir=str(Path(args.workdir) / "trainer-out"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4,
        num_train_epochs=1,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # --tiny smoke runs
        seed=0,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if tuned else "random",
    )
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if tuned else None)
    trainer = Trainer(model=model, args=training_args, train_dataset=data, data_collator=collator)
    reset_peak()
    metrics = trainer.train().metrics
    return {"train_seconds": metrics["train_runtime"], "peak_gpu_gib": peak_gib()}


def run_peftkit(args) -> dict:
    from peftkit.api import finetune

    method = "qlora" if args.method == "qlora" else "lora"
    reset_peak()
    result = finetune(
        {
            "model": {"name_or_path": str(Path(args.workdir) / "model"), "dtype": "bfloat16"},
            "adapter": {"method": method, "target_modules": TARGETS, **LORA},
            "data": {"train_file": str(Path(args.workdir) / "train.csv"), "validation_ratio": 0.01,
                     "max_length": 2048},
            "training": {"output_dir": str(Path(args.workdir) / "peftkit-out"), "num_epochs": 1,
                         "batch_size": args.batch_size, "learning_rate": 2e-4, "weight_decay": 0.0,
                         "progress_bar": False, "seed": 0},
            "export": {"save_adapter": False},
        }
    )  # fmt: skip
    train = result.metrics["train"]
    # peftkit carves 1% for validation: scale time to the full set for a like-for-like tokens/s
    return {
        "train_seconds": train["seconds"] * args.examples / train["samples"],
        "peak_gpu_gib": peak_gib(),
    }


def child(args) -> None:
    started = time.perf_counter()
    result = (
        run_peftkit(args) if args.system == "peftkit" else run_trainer(args, args.system == "trainer-tuned")
    )
    result["wall_seconds"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver


def spawn(args, system: str, method: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", system, "--method", method, "--workdir", args.workdir,
           "--batch-size", str(args.batch_size), "--examples", str(args.examples)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{system}/{method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1].removeprefix("RESULT "))


def peak_tflops() -> float:
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))


def parameter_count(workdir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in (workdir / "model").glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def summarize(args, runs: dict) -> dict:
    import peft
    import torch
    import transformers

    workdir = Path(args.workdir)
    tokens = real_tokens(workdir)
    n_params = parameter_count(workdir)
    peak = peak_tflops()
    table = {}
    for (system, method), results in runs.items():
        results = [r for r in results if r]
        if not results:
            continue
        seconds = statistics.median(r["train_seconds"] for r in results)
        tps = tokens / seconds
        table[f"{method}/{system}"] = {
            "tokens_per_second": tps,
            "peak_gpu_gib": statistics.median(r["peak_gpu_gib"] for r in results),
            "mfu_6n": 6 * n_params * tps / (peak * 1e12),
            "runs": results,
        }
    for key, row in table.items():
        method = key.split("/")[0]
        base = table.get(f"{method}/trainer")
        row["speedup_vs_trainer"] = row["tokens_per_second"] / base["tokens_per_second"] if base else None
        row["memory_vs_trainer"] = row["peak_gpu_gib"] / base["peak_gpu_gib"] if base else None
    env = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "parameters": n_params, "real_tokens": tokens, "examples": args.examples, "batch_size": args.batch_size,
        "peak_bf16_tflops": peak,
    }  # fmt: skip
    return {"environment": env, "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model and data: a CPU smoke run of the script"
    )
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--systems", default="trainer,trainer-tuned,peftkit")
    parser.add_argument("--output", help="write results JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.system = args.child
        child(args)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_assets(workdir, args.tiny, args.examples, seed=0)
    print(f"assets ready in {time.perf_counter() - started:.0f}s", flush=True)
    runs: dict = {}
    for repeat in range(args.repeats):
        for method in args.methods.split(","):
            for system in args.systems.split(","):
                result = spawn(args, system, method)
                runs.setdefault((system, method), []).append(result)
                print(f"[{repeat + 1}] {method}/{system}: {result}", flush=True)
    summary = summarize(args, runs)
    print(json.dumps(summary["environment"]))
    print(f"{'run':22s} {'tokens/s':>10s} {'x trainer':>9s} {'peak GiB':>9s} {'mem x':>6s} {'MFU(6N)':>8s}")
    for key, row in summary["results"].items():
        speed = row["speedup_vs_trainer"] or float("nan")
        mem = row["memory_vs_trainer"] or float("nan")
        print(f"{key:22s} {row['tokens_per_second']:10.0f} {speed:9.2f} {row['peak_gpu_gib']:9.2f} "
              f"{mem:6.2f} {row['mfu_6n']:8.3f}")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
