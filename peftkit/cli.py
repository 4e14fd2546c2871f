"""Command line: `peftkit train | eval | predict | generate | export | push | convert-gguf`, a thin layer over the Python API.

Works the same under `accelerate launch -m peftkit train RECIPE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_DIVERGED = 3  # training stopped on NaN/inf losses (training.max_bad_steps); earlier checkpoints kept
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped by SIGTERM/SIGINT after writing a checkpoint; resume it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning of BERT-, T5- and LLaMA-class text classifiers, "
        "text-to-text (T5/BART-class) and instruction-tuned (LLaMA-class) models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser(
        "train", help="fine-tune from a YAML recipe", description="Fine-tune from a YAML recipe."
    )
    train.add_argument("recipe", help="YAML recipe (see recipes/)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a recipe field, e.g. --set training.learning_rate=1e-4 (repeatable)",
    )  # fmt: skip
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument(
        "--resume", metavar="auto|PATH",
        help="continue from the newest committed checkpoint in OUTPUT_DIR/checkpoints (auto) or from PATH",
    )  # fmt: skip

    ev = sub.add_parser(
        "eval",
        help="evaluate a trained adapter on a labelled file",
        description="Evaluate a trained adapter (run or adapter folder) on a labelled file.",
    )
    ev.add_argument("run", help="run folder or adapter folder")
    ev.add_argument("--data", required=True, help="labelled CSV/TSV/JSON/JSONL/Parquet file")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--base-model", help="load the adapter on this base (a local copy or Hub id); checked")

    pr = sub.add_parser("predict", help="predict labels for texts", description="Predict labels for texts.")
    pr.add_argument("run", help="run folder or adapter folder")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument(
        "--file", help="a text file (one text per line) or a CSV/TSV/JSON/JSONL file with the text column"
    )
    pr.add_argument("--output", help="write predictions as JSONL here instead of printing them")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--base-model", help="load the adapter on this base (a local copy or Hub id); checked")
    ge = sub.add_parser(
        "generate",
        help="generate text with a trained seq2seq or causal-lm run",
        description="Greedy generation with a trained seq2seq or causal-lm run (run, adapter or export folder, "
        "or a Hub id); a causal-lm text is one user turn in the run's chat template.",
    )
    ge.add_argument("run", help="run, adapter or export folder (adapter or merged), or a Hub id")
    ge.add_argument("texts", nargs="*", help="inputs (seq2seq) or instructions (causal-lm)")
    ge.add_argument("--file", help="a text file (one input per line) or a CSV/TSV/JSON/JSONL file")
    ge.add_argument("--max-new-tokens", type=int, default=32)
    ge.add_argument("--batch-size", type=int, default=16)
    _export_parsers(sub)
    cg = sub.add_parser(
        "convert-gguf",
        help="convert a GGUF checkpoint to a transformers safetensors folder",
        description="Convert a GGUF checkpoint (model and tokenizer) to a float32 safetensors folder.",
    )
    cg.add_argument("gguf", help="the .gguf file")
    cg.add_argument("output", help="new folder to write (replaced atomically)")
    return parser


def _export_parsers(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="export a standalone adapter or a merged model, with a model card",
        description="Export a run or adapter folder (classification, seq2seq or causal-lm) as a standalone "
        "adapter or as a merged model, with a model card.",
    )
    ex.add_argument("run", help="run folder or adapter folder")
    kind = ex.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--adapter", action="store_true",
        help="the adapter (a classifier's head with it), tokenizer and chat template, peftkit.json (peft)",
    )  # fmt: skip
    kind.add_argument(
        "--merged", action="store_true",
        help="LoRA/DoRA/rsLoRA/IA3/QLoRA merged into the float32 base, checked against the adapter model "
        "(transformers); bottleneck, prefix and prompt adapters cannot merge",
    )  # fmt: skip
    ex.add_argument("--output", required=True, help="new folder to write")
    ex.add_argument(
        "--base-model-id", help="Hub id of the base model, for the card (when trained on a folder)"
    )
    ex.add_argument("--license", default="apache-2.0", help="license in the card (default apache-2.0)")
    ex.add_argument("--max-shard-size", default="2GB", help="merged: largest safetensors shard (default 2GB)")
    ex.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="merged: dtype"
    )
    ex.add_argument(
        "--requantize", action="store_true", help="merged: save quantized to 4 bit (bitsandbytes)"
    )
    ex.add_argument(
        "--push-to-hub", metavar="REPO", help="then upload the export to this Hub repo (USER/NAME)"
    )
    ex.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")

    pu = sub.add_parser(
        "push",
        help="upload an export (or a run, exported first) to the Hugging Face Hub",
        description="Upload an export folder (or a run folder, exported as an adapter first) to a Hub model repo. "
        "The token comes from HF_TOKEN or `hf auth login`.",
    )
    pu.add_argument("run", help="export folder or run folder")
    pu.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME")
    pu.add_argument("--private", action="store_true", help="create the repo private")
    pu.add_argument(
        "--dry-run", action="store_true", help="list the files that would be uploaded; send nothing"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    main_process = os.environ.get("RANK", "0") == "0"  # under a launcher, other processes only warn
    level = logging.INFO if main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.version:
        from peftkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    from peftkit.config import ConfigError
    from peftkit.data import DataError
    from peftkit.export import ExportError
    from peftkit.hub import HubError
    from peftkit.numerics import NonFiniteLossError
    from peftkit.predict import AdapterFolderError
    from peftkit.train import TrainingInterrupted

    try:
        commands = {
            "train": _train, "eval": _eval, "predict": _predict, "generate": _generate, "export": _export,
            "push": _push,
        }  # fmt: skip
        commands["convert-gguf"] = _convert_gguf
        return commands[args.command](args)
    except (ConfigError, DataError, AdapterFolderError, ExportError, HubError) as err:
        print(f"peftkit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as err:
        print(f"peftkit: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLossError as err:
        print(f"peftkit: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED


def _train(args) -> int:
    from peftkit.api import finetune
    from peftkit.config import load_recipe

    overrides = args.overrides + ([f"training.resume={args.resume}"] if args.resume else [])
    config = load_recipe(args.recipe, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    result = finetune(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        summary = {k: result.metrics[k] for k in ("validation", "test") if k in result.metrics}
        summary["train_samples_per_second"] = round(result.metrics["train"]["samples_per_second"], 2)
        summary["output_dir"] = str(result.output_dir)
        print(json.dumps(summary, indent=2))
    return 0


def _eval(args) -> int:
    from peftkit.data import read_file
    from peftkit.predict import load_classifier

    classifier = load_classifier(args.run, base_model=args.base_model)
    columns = classifier.metadata["data"]
    data = read_file(args.data)
    texts = list(data[columns["text_column"]])
    pairs = list(data[columns["text_pair_column"]]) if columns["text_pair_column"] else None
    labels = [str(v) for v in data[columns["label_column"]]]
    predictions = classifier.predict(texts, pairs, batch_size=args.batch_size)
    correct = sum(p.label == y for p, y in zip(predictions, labels, strict=True))
    print(json.dumps({"accuracy": correct / len(labels), "samples": len(labels)}, indent=2))
    return 0


def _predict(args) -> int:
    from peftkit.predict import load_classifier

    texts = list(args.texts) + (_read_texts(args.file) if args.file else [])
    if not texts:
        print("peftkit predict: give texts as arguments or --file", file=sys.stderr)
        return EXIT_USAGE
    classifier = load_classifier(args.run, base_model=args.base_model)
    predictions = classifier.predict(texts, batch_size=args.batch_size)
    lines = [
        json.dumps(
            {"text": t, "label": p.label, "score": round(p.score, 4), "probabilities": p.probabilities}
        )
        for t, p in zip(texts, predictions, strict=True)
    ]
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


def _generate(args) -> int:
    from peftkit.generation import load_generator

    texts = list(args.texts) + (_read_texts(args.file) if args.file else [])
    if not texts:
        print("peftkit generate: give texts as arguments or --file", file=sys.stderr)
        return EXIT_USAGE
    generator = load_generator(args.run)
    outputs = generator.generate(texts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print("\n".join(json.dumps({"text": t, "generation": g}) for t, g in zip(texts, outputs, strict=True)))
    return 0


def _export(args) -> int:
    from peftkit.export import export_model

    result = export_model(
        args.run, args.output, merged=args.merged, base_model_id=args.base_model_id, license=args.license,
        max_shard_size=args.max_shard_size, dtype=args.dtype, requantize=args.requantize,
        push_to_hub=args.push_to_hub, private=args.private,
    )  # fmt: skip
    summary = {"output_dir": str(result.output_dir), "files": result.files, "merge_check": result.merge_check}
    print(json.dumps(summary | ({"pushed": result.pushed} if result.pushed else {}), indent=2))
    return 0


def _push(args) -> int:
    from peftkit.hub import push_to_hub

    print(
        json.dumps(push_to_hub(args.run, args.repo_id, private=args.private, dry_run=args.dry_run), indent=2)
    )
    return 0


def _convert_gguf(args) -> int:
    from peftkit.convert import convert_gguf

    print(json.dumps({"output_dir": str(convert_gguf(args.gguf, args.output))}, indent=2))
    return 0


def _read_texts(path: str) -> list[str]:
    file = Path(path)
    if file.suffix.lower() in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        from peftkit.data import read_file

        data = read_file(path)
        column = "text" if "text" in data.column_names else data.column_names[0]
        return list(data[column])
    with file.open(newline="") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
