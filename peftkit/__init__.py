"""peftkit: parameter-efficient fine-tuning of BERT-, T5- and LLaMA-class classifiers on Accelerate.

import peftkit
result = peftkit.finetune("recipes/quickstart.yaml")
clf = peftkit.load_classifier(result.adapter_dir)
clf.predict(["I was charged twice"])
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names -> defining module. Imported on first use so `peftkit --help` stays fast.
_EXPORTS = {
    "finetune": "peftkit.api",
    "FinetuneResult": "peftkit.api",
    "RunConfig": "peftkit.config",
    "ConfigError": "peftkit.config",
    "load_recipe": "peftkit.config",
    "DataError": "peftkit.data",
    "Classifier": "peftkit.predict",
    "Prediction": "peftkit.predict",
    "load_classifier": "peftkit.predict",
    "Generator": "peftkit.generation",
    "load_generator": "peftkit.generation",
    "export_model": "peftkit.export",
    "ExportResult": "peftkit.export",
    "ExportError": "peftkit.export",
    "combine_adapters": "peftkit.merge",
    "push_to_hub": "peftkit.hub",
    "TrainingInterrupted": "peftkit.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peftkit' has no attribute {name!r}")
