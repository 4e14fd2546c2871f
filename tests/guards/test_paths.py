"""Group 6, paths: names from configs, files or the Hub (adapter names, bundled file names, file names)
cannot escape the folder they belong to (`../`, absolute paths, links)."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import tiny_run_config

from peftkit.cli import main
from peftkit.data import resolve_data_path
from peftkit.io import UnsafePathError, contained, safe_name
from peftkit.predict import load_classifier

from .conftest import snapshot


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "support_tickets/../../../setup.py"])
def test_bundled_data_name_cannot_leave_the_bundled_folder(name, tiny_models, toy_files, tmp_path, capsys):
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / "out")
    config["data"]["train_file"] = f"bundled:{name}"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"bundled data file {name!r}" in err and ("leaves" in err or "must be a relative name" in err)
    assert not (tmp_path / "out").exists()
    assert resolve_data_path("bundled:support_tickets/train.csv").is_file()  # a real bundled name still works


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", "x\\..\\y"])
def test_adapter_name_cannot_become_a_path(name, guard_run, tmp_path):
    classifier = load_classifier(guard_run, device="cpu")
    before = snapshot(guard_run)
    with pytest.raises(UnsafePathError, match="adapter name") as err:
        classifier.load_adapter(guard_run, name)
    assert repr(name) in str(err.value)
    assert list(classifier.adapters) == ["default"]
    assert snapshot(guard_run) == before
    assert not (guard_run.parent / "evil").exists()


def test_contained_refuses_dot_dot_absolute_and_escaping_links(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert contained(root, "adapter/weights.safetensors") == root / "adapter" / "weights.safetensors"
    for name, message in [
        ("../x", "leaves"),
        ("a/../../x", "leaves"),
        ("..\\x", "leaves"),
        ("/etc/passwd", "must be a relative name"),
        ("", "must be a relative name"),
    ]:
        with pytest.raises(UnsafePathError, match=message):
            contained(root, name, "file name")
    os.symlink(tmp_path, root / "link")  # a link inside that points outside
    with pytest.raises(UnsafePathError, match="resolves outside"):
        contained(root, "link/secret.txt")
    assert safe_name("my-adapter_2") == "my-adapter_2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing was created
