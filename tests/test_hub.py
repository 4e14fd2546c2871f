"""Pushing to and fetching from the Hub, with huggingface_hub's HTTP client replaced by a recording fake.

The seam is `huggingface_hub.set_client_factory`: every request huggingface_hub makes goes to
`FakeHub`, which answers like the Hub and records what was sent. Nothing reaches the network.
"""

import base64
import json
import logging
import traceback

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub.utils._http import default_client_factory  # to restore the real client afterwards
from safetensors.torch import save_file

from peftkit.cli import main
from peftkit.export import export_model
from peftkit.hub import ALLOW_PATTERNS, HubError, download, files_to_upload, push_to_hub

TOKEN = "hf_FAKEtokenNeverToBeSeen0123456789"

SHARED = [
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "peftkit.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
]
NEVER = [
    "optimizer.pt",
    "pytorch_model.bin",
    "training_args.bin",
    "run.json",
    "metrics.jsonl",
    ".env",
    "notes.txt",
]


class FakeHub:
    """Answers create-repo, validate-yaml, preupload and commit like the Hub; records every request."""

    def __init__(self, fail_with: int | None = None):
        self.requests: list[httpx2.Request] = []
        self.fail_with = fail_with

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        if self.fail_with:  # an error page that echoes the credentials, as a misbehaving proxy might
            auth = request.headers.get("authorization", "")
            return httpx2.Response(self.fail_with, json={"error": f"bad credentials: {auth}"})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            return httpx2.Response(
                200, json={"url": f"https://huggingface.co/{body['organization']}/{body['name']}"}
            )
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx2.Response(200, json={"files": modes})
        if "/commit/" in path:
            return httpx2.Response(
                200, json={"commitUrl": "https://huggingface.co/c/1", "commitOid": "1" * 40}
            )
        return httpx2.Response(404, json={"error": f"FakeHub does not serve {path}"})

    def committed_files(self) -> dict[str, bytes]:
        """path in repo -> content, from the NDJSON body of the commit request(s)."""
        files = {}
        for request in self.requests:
            if "/commit/" in request.url.path:
                for line in request.content.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return files


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield hub
    huggingface_hub.set_client_factory(default_client_factory)


@pytest.fixture
def export_dir(tmp_path):
    """An export folder as `peftkit export` writes it, plus files that must never be sent."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in SHARED + NEVER:
        (folder / name).write_text(f"content of {name}\n")
    (folder / "peftkit.json").write_text(json.dumps({"format": "adapter", "labels": ["a", "b"]}))
    (folder / "checkpoints" / "step-1").mkdir(parents=True)
    (folder / "checkpoints" / "step-1" / "adapter_model.safetensors").write_text("a checkpoint")
    return folder


def test_allow_list(export_dir):
    assert files_to_upload(export_dir) == sorted(SHARED)
    assert "*.safetensors" in ALLOW_PATTERNS and not any(p.endswith((".bin", ".pt")) for p in ALLOW_PATTERNS)


def test_push_sends_exactly_the_allow_list_and_never_the_token(fake_hub, export_dir, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    result = push_to_hub(export_dir, "someone/tiny-classifier", private=True)
    assert (
        result["files"] == sorted(SHARED)
        and result["url"] == "https://huggingface.co/someone/tiny-classifier"
    )
    (create,) = [json.loads(r.content) for r in fake_hub.requests if r.url.path == "/api/repos/create"]
    assert (create["organization"], create["name"], create["visibility"]) == (
        "someone",
        "tiny-classifier",
        "private",
    )
    sent = fake_hub.committed_files()
    assert sorted(sent) == sorted(SHARED)
    assert all(sent[name] == (export_dir / name).read_bytes() for name in sent)
    # the token authenticates the requests that change the repo, and goes nowhere else
    for request in fake_hub.requests:
        changes_repo = request.url.path == "/api/repos/create" or "/commit/" in request.url.path
        assert request.headers.get("authorization") == f"Bearer {TOKEN}" or not changes_repo
        assert TOKEN not in str(request.url) and TOKEN.encode() not in request.content
    out, err = capsys.readouterr()
    assert TOKEN not in out + err + caplog.text + json.dumps(result)
    assert not any(TOKEN.encode() in p.read_bytes() for p in export_dir.rglob("*") if p.is_file())


def test_dry_run_sends_nothing(fake_hub, export_dir, capsys):
    assert main(["push", str(export_dir), "--repo-id", "someone/tiny-classifier", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"] == sorted(SHARED) and printed["dry_run"] is True
    assert not [
        r for r in fake_hub.requests if r.method != "GET"
    ]  # nothing sent (huggingface_hub may look up)


def test_hub_errors_are_redacted(fake_hub, export_dir, caplog, capsys):
    fake_hub.fail_with = 401
    with pytest.raises(HubError) as info:
        push_to_hub(export_dir, "someone/tiny-classifier")
    assert "401" in str(info.value) and "***" in str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert TOKEN not in shown + caplog.text
    assert main(["push", str(export_dir), "--repo-id", "someone/tiny-classifier"]) == 2
    out, err = capsys.readouterr()
    assert "push to 'someone/tiny-classifier' failed" in err and TOKEN not in out + err


def test_push_refuses_before_any_request(fake_hub, export_dir, monkeypatch, tmp_path):
    with pytest.raises(HubError, match="USER/NAME"):
        push_to_hub(export_dir, "no-namespace")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_to_hub(export_dir, "someone/tiny-classifier")
    assert not [r for r in fake_hub.requests if r.method != "GET"]


def test_download_fetches_only_the_allow_list(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download("someone/tiny-classifier") == tmp_path
    assert calls == [("someone/tiny-classifier", None, ALLOW_PATTERNS)]

    def failing(repo_id, revision=None, allow_patterns=None):
        raise OSError(f"401 for token {TOKEN}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HubError, match="not a local folder") as info:
        download("someone/tiny-classifier")
    assert TOKEN not in str(info.value)


def test_export_then_push(fake_hub, tmp_path):
    """`export --push-to-hub`: an adapter folder without its run.json (the card says so), exported and sent."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"})
    )
    save_file(
        {"base_model.model.classifier.weight": torch.zeros(2, 4)}, adapter / "adapter_model.safetensors"
    )
    (adapter / "tokenizer.json").write_text("{}")
    (adapter / "README.md").write_text("peft's placeholder card")
    meta = {"method": "lora", "base_model": "someone/base", "model_type": "bert", "labels": ["a", "b"],
            "pad_token_id": 0, "peftkit_version": "0.1.0",
            "data": {"text_column": "text", "text_pair_column": None, "label_column": "label", "max_length": 32}}  # fmt: skip
    (adapter / "peftkit.json").write_text(json.dumps(meta))
    result = export_model(adapter, tmp_path / "export", push_to_hub="someone/tiny-classifier")
    sent = fake_hub.committed_files()
    assert sorted(sent) == result.files == result.pushed["files"]
    assert sorted(sent) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "peftkit.json",
        "tokenizer.json",
    ]
    card = sent["README.md"].decode()
    assert "base_model: someone/base" in card and "not recorded" in card and "placeholder" not in card
    assert all(TOKEN.encode() not in content for content in sent.values())
