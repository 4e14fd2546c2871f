"""Every shipped recipe parses and validates."""

from pathlib import Path

import pytest

from peftkit.config import load_recipe

RECIPES = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
    if "accelerate" not in p.parts
)


def test_recipes_found():
    assert len(RECIPES) >= 2, RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    config = load_recipe(recipe)
    assert config.model.name_or_path
    assert config.training.output_dir.startswith("runs/")
