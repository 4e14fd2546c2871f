import pytest

from peftkit.config import ConfigError, config_from_dict, load_recipe, parse_override, validate

BASE = {"data": {"train_file": "x.csv"}}


def test_defaults_validate():
    config = validate(config_from_dict(BASE))
    assert config.adapter.method == "lora"
    assert config.training.learning_rate == 5e-4


def test_unknown_key_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"unknown key 'training.learnin_rate'.*learning_rate"):
        config_from_dict({**BASE, "training": {"learnin_rate": 1e-3}})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"training.batch_size: 'big' is not a int"):
        config_from_dict({**BASE, "training": {"batch_size": "big"}})


def test_literal_lists_choices():
    with pytest.raises(ConfigError, match=r"training.lr_scheduler: 'step' is not one of 'linear', 'cosine'"):
        config_from_dict({**BASE, "training": {"lr_scheduler": "step"}})


def test_unknown_method_lists_methods():
    with pytest.raises(ConfigError, match=r"adapter.method: 'lorax' is not one of .*lora"):
        validate(config_from_dict({**BASE, "adapter": {"method": "lorax"}}))


def test_no_data_source():
    with pytest.raises(ConfigError, match="data.train_file"):
        validate(config_from_dict({}))


@pytest.mark.parametrize(
    "item, expected",
    [
        ("training.learning_rate=1e-4", (["training", "learning_rate"], "1e-4")),
        ("training.batch_size=8", (["training", "batch_size"], 8)),
        ("adapter.target_modules=[q,v]", (["adapter", "target_modules"], ["q", "v"])),
        ("data.validation_file=", (["data", "validation_file"], None)),
    ],
)
def test_parse_override(item, expected):
    assert parse_override(item) == expected


def test_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train_file: a.csv\ntraining:\n  learning_rate: 1e-3\n")
    config = load_recipe(recipe, ["training.learning_rate=2e-4", "adapter.r=4"])
    assert config.training.learning_rate == 2e-4  # YAML's "1e-3" string coerced, then overridden
    assert config.adapter.r == 4


def test_recipe_float_without_dot_is_coerced(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train_file: a.csv\ntraining:\n  learning_rate: 3e-4\n")
    assert load_recipe(recipe).training.learning_rate == pytest.approx(3e-4)


def test_override_of_non_section_is_error():
    with pytest.raises(ConfigError, match="not a section"):
        load_recipe_from_values({"task": "classification"}, ["task.x=1"])


def load_recipe_from_values(values, overrides):
    from peftkit.config import apply_overrides

    return config_from_dict(apply_overrides(values, overrides))


def test_unquoted_no_is_the_choice_no_not_false(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train_file: x.csv\ntraining:\n  mixed_precision: no\n")
    assert load_recipe(recipe, ["training.mixed_precision=bf16"]).training.mixed_precision == "bf16"
    assert load_recipe(recipe).training.mixed_precision == "no"
    assert load_recipe(recipe, ["training.mixed_precision=no"]).training.mixed_precision == "no"
