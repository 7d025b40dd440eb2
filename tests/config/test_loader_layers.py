"""The one loader's layers: base < preset < defaults < file < options < --set < forced, typed values
kept typed, and each invalid value blamed on where it came from."""

from __future__ import annotations

import pytest
import yaml

from olmo_cli.config.loader import load_config
from olmo_cli.errors import ConfigError, UsageError

ODD_NAMES = ["2024", "on", "null", "a: b", "[x]", "{k: v}", "~", "1e3"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_forced_value_is_never_read_as_yaml(name):
    loaded = load_config(
        preset="tiny", forced={"save_folder": name}, origins={"save_folder": "--save-folder"}
    )
    assert loaded.config.save_folder == name
    assert "save_folder" in loaded.explicit


def test_precedence_of_every_layer(tmp_path):
    lr = "optimizer.learning_rate"
    base = load_config(preset="tiny").config.model_dump(mode="json")
    base["optimizer"]["learning_rate"] = 1.0
    base["run_name"] = "from-base"

    def got(**kwargs):
        return load_config(**kwargs).config

    assert got(base=base).optimizer.learning_rate == 1.0  # the base is the starting point
    assert got(base=base, defaults={lr: 2.0}).optimizer.learning_rate == 2.0  # defaults beat it
    preset = got(base=base, preset="tiny", defaults={lr: 2.0})
    assert preset.optimizer.learning_rate == 2.0 and preset.run_name != "from-base"  # a preset replaces it
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({**base, "optimizer": {"learning_rate": 3.0}}))
    cfg = got(base=base, config_file=file, defaults={lr: 2.0, "optimizer.weight_decay": 0.5})
    # The file beats the defaults key by key; what it does not set keeps the default.
    assert (cfg.optimizer.learning_rate, cfg.optimizer.weight_decay) == (3.0, 0.5)
    layered = dict(config_file=file, options={lr: 4.0})
    assert got(**layered).optimizer.learning_rate == 4.0
    assert got(**layered, overrides=[f"{lr}=5"]).optimizer.learning_rate == 5.0
    assert got(**layered, overrides=[f"{lr}=5"], forced={lr: 6.0}).optimizer.learning_rate == 6.0


def test_defaults_may_depend_on_what_is_below():
    def capped(below):
        return {"global_train_batch_size": min(below.get("global_train_batch_size") or 512, 4)}

    assert load_config(preset="tiny", defaults=capped).config.global_train_batch_size == 4  # preset's: 8


def test_explicit_keys_are_the_user_s(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"model": {"d_model": 96}}))
    loaded = load_config(config_file=file, overrides=["seed=3"], defaults={"stop_at": 5})
    assert {
        "model",
        "model.d_model",
        "seed",
    } <= loaded.explicit  # sections too and "stop_at" not in loaded.explicit


def test_an_invalid_typed_value_is_blamed_on_its_option():
    with pytest.raises(ConfigError) as info:
        load_config(preset="tiny", forced={"seed": "many"}, origins={"seed": "--seed"})
    assert "(from --seed)" in "\n".join(info.value.details) and info.value.exit_code == 2
    with pytest.raises(ConfigError) as info:
        load_config(preset="tiny", overrides=["seed=many"])
    assert "(from --set)" in "\n".join(info.value.details)


def test_sources():
    with pytest.raises(UsageError, match="exactly one"):
        load_config()
    with pytest.raises(UsageError, match="at most one"):
        load_config(preset="tiny", config_file="x.yaml", base={})
