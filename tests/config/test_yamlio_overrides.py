"""YAML reading (YAML 1.2 numbers, as upstream's OmegaConf reads them) and --set overrides."""

import pytest

from olmo_cli.config.overrides import apply_overrides, parse_override
from olmo_cli.config.yamlio import dump_yaml, parse_yaml
from olmo_cli.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3e12", 3e12),
        ("1e-4", 1e-4),
        ("3.0e-4", 3.0e-4),
        ("-2E5", -2e5),
        ("739_328", 739328),
        ("2e12T", "2e12T"),
        ("2ep", "2ep"),
        ("null", None),
        ("true", True),
        ("[a.npy, b.npy]", ["a.npy", "b.npy"]),
    ],
)
def test_scalars_read_like_upstream(text, expected):
    assert parse_yaml(f"x: {text}")["x"] == expected


def test_dump_quotes_strings_that_would_read_back_as_numbers():
    data = {"max_duration": "2e12", "name": "run", "lr": 3e-4, "betas": (0.9, 0.95)}
    assert parse_yaml(dump_yaml(data)) == {**data, "betas": [0.9, 0.95]}


def test_invalid_yaml_names_the_line():
    with pytest.raises(ConfigError, match=r"line 2"):
        parse_yaml("a: 1\nb: x: y\nc: 2\n", source="bad.yaml")


def test_override_keys_are_normalised_like_upstream():
    assert parse_override("--data.num-workers=4") == (["data", "num_workers"], 4)
    assert parse_override("save_overwrite=true") == (["save_overwrite"], True)
    assert parse_override("max_duration=2e12T") == (["max_duration"], "2e12T")
    assert parse_override("run_name=") == (["run_name"], "")


def test_overrides_set_nested_values_lists_and_null():
    data = {"model": {"n_layers": 32}, "wandb": None, "evaluators": [{"label": "a"}]}
    result, touched = apply_overrides(
        data,
        [
            "model.n_layers=4",
            "optimizer.learning_rate=3e-4",
            "data.paths=[a.npy,b.npy]",
            "wandb.project=demo",
            "evaluators.0.label=b",
            "compile=null",
        ],
    )
    assert result["model"]["n_layers"] == 4
    assert result["optimizer"]["learning_rate"] == 3e-4
    assert result["data"]["paths"] == ["a.npy", "b.npy"]
    assert result["wandb"] == {"project": "demo"}
    assert result["evaluators"][0]["label"] == "b"
    assert result["compile"] is None
    assert data["model"]["n_layers"] == 32  # the input is not modified
    assert "model.n_layers" in touched and "evaluators.0.label" in touched


def test_override_errors_are_config_errors():
    with pytest.raises(ConfigError, match="no valid key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"evaluators": [{}]}, ["evaluators.5.label=x"])
