"""Share on the Hugging Face Hub: push an export, download one for `predict`/`eval`/`generate`.

Only an allow-list of files is ever sent (weights as safetensors, configs,
tokenizer files and chat template, `peftkit.json`, the card), named one by one in
a single commit: never optimizer states, checkpoints, logs or anything else that
sits in a run folder. The token comes from huggingface_hub (the HF_TOKEN variable or the login
cache) and never appears in a log, a file or an error message: errors from the
Hub are re-raised with it redacted.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from pathlib import Path

from peftkit.export import is_export

logger = logging.getLogger(__name__)

ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "peftkit.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",  # a causal-lm tokenizer's chat template (transformers 5 saves it apart)
    "*.model",  # sentencepiece: tokenizer.model, spiece.model, sentencepiece.bpe.model
]


class HubError(RuntimeError):
    """A Hub operation that failed or cannot start; the message never holds the token."""


def files_to_upload(folder: str | Path) -> list[str]:
    """The files of `folder` (top level only) that match the allow-list, sorted."""
    folder = Path(folder)
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in ALLOW_PATTERNS)
    )


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload with peftkit",
) -> dict:
    """Upload an export folder to the model repo `repo_id` (created if missing); return what was sent.

    A run folder or an unexported adapter folder is exported first (`--adapter`, with
    its card) into a temporary folder. `dry_run` lists the files and sends nothing.
    `private` applies when the repo is created; an existing repo keeps its visibility.
    """
    _check_repo_id(repo_id)
    folder = Path(folder)
    if is_export(folder):
        return _push_export(folder, repo_id, private, dry_run, commit_message)
    from peftkit.export import export_model

    with tempfile.TemporaryDirectory(prefix="peftkit-push-") as tmp:
        export = export_model(folder, Path(tmp) / "export", merged=False)
        return _push_export(export.output_dir, repo_id, private, dry_run, commit_message)


def _push_export(folder: Path, repo_id: str, private: bool, dry_run: bool, commit_message: str) -> dict:
    files = files_to_upload(folder)
    if dry_run:
        logger.info("dry run: would upload %d files to %s: %s", len(files), repo_id, ", ".join(files))
        return {"repo_id": repo_id, "files": files, "url": None, "dry_run": True}
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    if token is None:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    try:
        url = api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
        api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model")
    except Exception as err:  # huggingface_hub and its HTTP layer raise many types
        raise HubError(
            f"push to {repo_id!r} failed: {redact(f'{type(err).__name__}: {err}', token)}"
        ) from None
    logger.info("uploaded %d files to %s: %s", len(files), repo_id, ", ".join(files))
    return {"repo_id": repo_id, "files": files, "url": str(url), "dry_run": False}


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the allow-listed files of a model repo (an adapter or merged export) and return the local folder."""
    from huggingface_hub import get_token, snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except Exception as err:
        message = redact(f"{type(err).__name__}: {err}", get_token())
        raise HubError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hub failed: {message}"
        ) from None


def looks_like_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def redact(text: str, token: str | None) -> str:
    """`text` with every occurrence of `token` replaced."""
    return text.replace(token, "***") if token else text


def _check_repo_id(repo_id: str) -> None:
    if "/" not in repo_id or not looks_like_repo_id(repo_id):
        raise HubError(f"--repo-id {repo_id!r}: give USER/NAME or ORG/NAME (letters, digits, '-', '_', '.')")
