"""Command line: `peftkit train | eval | predict`, a thin layer over the Python API.

Works the same under `accelerate launch -m peftkit train RECIPE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning of BERT-, T5- and LLaMA-class text classifiers.",
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

    ev = sub.add_parser(
        "eval",
        help="evaluate a trained adapter on a labelled file",
        description="Evaluate a trained adapter (run or adapter folder) on a labelled file.",
    )
    ev.add_argument("run", help="run folder or adapter folder")
    ev.add_argument("--data", required=True, help="labelled CSV/TSV/JSON/JSONL/Parquet file")
    ev.add_argument("--batch-size", type=int, default=64)

    pr = sub.add_parser("predict", help="predict labels for texts", description="Predict labels for texts.")
    pr.add_argument("run", help="run folder or adapter folder")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument(
        "--file", help="a text file (one text per line) or a CSV/TSV/JSON/JSONL file with the text column"
    )
    pr.add_argument("--output", help="write predictions as JSONL here instead of printing them")
    pr.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.version:
        from peftkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    from peftkit.config import ConfigError
    from peftkit.data import DataError
    from peftkit.predict import AdapterFolderError

    try:
        return {"train": _train, "eval": _eval, "predict": _predict}[args.command](args)
    except (ConfigError, DataError, AdapterFolderError) as err:
        print(f"peftkit: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _train(args) -> int:
    from peftkit.api import finetune
    from peftkit.config import load_recipe

    config = load_recipe(args.recipe, args.overrides)
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

    classifier = load_classifier(args.run)
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
    classifier = load_classifier(args.run)
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
