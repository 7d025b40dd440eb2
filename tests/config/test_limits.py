"""The bounds on reading a config: YAML size, nesting, anchors and encodings; interpolation depth, value
size and total work; booleans where numbers belong; `--set KEY` without a value. The same refusals as
user errors (ConfigError) or, for a checkpoint's file, as CheckpointError."""

from __future__ import annotations

import codecs
import re
import time

import pytest

from olmo_cli.config import interpolate, yamlio
from olmo_cli.config.interpolate import resolve_interpolations
from olmo_cli.config.loader import load_config, validate
from olmo_cli.config.overrides import apply_overrides, parse_override
from olmo_cli.config.yamlio import parse_yaml, read_config_text, read_yaml
from olmo_cli.errors import CheckpointError, ConfigError

# ---- YAML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, 2]\nb: 3\n", r"t\.yaml \(line 1, column 4\) defines the YAML anchor &x"),
        ("a: 1\nb: *x\n", r"\(line 2, column 4\) uses the YAML alias \*x"),
        ("base: &b {n: 1}\nmodel:\n  <<: *b\n", "anchor &b"),
        ("a: " + "[" * 65 + "]" * 65, "deeper than 64 levels"),
        ("a: " + "{b: " * 10_000, "deeper than 64 levels"),
        ("n: " + "1" * 5000, r"\(line 1, column 4\) has a value that cannot be read: Exceeds the limit"),
        ("d: 2024-13-45", "cannot be read: month must be in 1..12"),
        ("a: 1\x00", "contains NUL bytes"),
    ],
)
@pytest.mark.parametrize("loader", yamlio._LOADERS, ids=lambda c: c.__name__)
def test_yaml_refusals_name_the_source_and_line(text, message, loader):
    with pytest.raises(ConfigError, match=message) as info:
        parse_yaml(text, source="t.yaml", loader=loader)
    assert info.value.hint


@pytest.mark.parametrize("loader", yamlio._LOADERS, ids=lambda c: c.__name__)
def test_node_cap_and_control_characters(loader, monkeypatch):
    monkeypatch.setattr(yamlio, "MAX_NODES", 1000)
    with pytest.raises(ConfigError, match=r"\(line 1, column \d+\) holds more than 1,000 values"):
        parse_yaml("a: [" + "1, " * 1000 + "1]", source="t.yaml", loader=loader)
    assert len(parse_yaml("a: [" + "1, " * 990 + "1]", loader=loader)["a"]) == 991
    with pytest.raises(ConfigError, match=r"t.yaml \(line 2\) holds the control character U\+0007"):
        parse_yaml("a: 1\nb: x\x07y\n", source="t.yaml", loader=loader)
    with pytest.raises(ConfigError, match="not valid UTF-8 text"):
        parse_yaml("a: \udcff", source="--set a=...", loader=loader)  # undecodable bytes in argv


def test_both_loaders_read_the_presets_alike():
    from olmo_cli.config.presets import preset_dir
    from tests._upstream_config import upstream_style_config

    texts = [p.read_text() for p in sorted(preset_dir().glob("*.yaml"))]
    texts.append(yamlio.dump_yaml(upstream_style_config()))
    for text in texts:
        results = [parse_yaml(text, loader=loader) for loader in yamlio._LOADERS]
        assert all(r == results[0] for r in results)


def test_nesting_up_to_the_limit_is_fine():
    depth = yamlio.MAX_NESTING - 1  # the document's top-level map is one level
    assert parse_yaml("a: " + "[" * depth + "]" * depth) == {"a": eval("[" * depth + "]" * depth)}


def test_refusals_take_the_callers_error_class(tmp_path):
    with pytest.raises(CheckpointError, match="alias"):
        parse_yaml("a: *x", source="ckpt/config.yaml", error=CheckpointError)
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe" + "a: 1".encode("utf-16-le"))
    with pytest.raises(CheckpointError, match="UTF-16"):
        read_yaml(path, error=CheckpointError)
    assert CheckpointError.exit_code == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (codecs.BOM_UTF16_BE + "a: 1".encode("utf-16-be"), "is UTF-16 text"),
        ("a: 1".encode("utf-32"), "is UTF-32 text"),
        (b"a: 1\nb: \x00\x01\x02", "contains NUL bytes"),
        (b"a: 1\nb: \xc3\x28\n", r"not UTF-8 text: byte 0xc3 on line 2"),
    ],
)
def test_files_that_are_not_utf8_text_are_refused(tmp_path, raw, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=message):
        read_config_text(path)


def test_a_utf8_byte_order_mark_is_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(codecs.BOM_UTF8 + b"run_name: caf\xc3\xa9\n")
    assert read_yaml(path) == {"run_name": "café"}


def test_size_cap_reads_no_more_than_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlio, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n" + "#" * 996)  # 1001 bytes
    with pytest.raises(ConfigError, match="larger than"):
        read_config_text(path)
    path.write_text("a: 1\n" + "#" * 995)
    assert read_yaml(path) == {"a": 1}
    with pytest.raises(ConfigError, match="longer than"):
        parse_yaml("a: " + "x" * 1000, source="--set a=...")


def test_directories_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_config_text(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config_text(tmp_path / "nope.yaml", error=CheckpointError)


# ---- interpolation --------------------------------------------------------------------------------


def _doubling(n: int, template: str = "${{a{p}}}${{a{p}}}") -> dict:
    data = {"a0": "x"}
    data.update({f"a{i}": template.format(p=i - 1) for i in range(1, n + 1)})
    return data


def test_a_doubling_chain_stops_at_the_value_limit_quickly():
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot resolve a21: its value would be larger than 1 MiB") as e:
        resolve_interpolations(_doubling(60), source="x.yaml")
    assert time.monotonic() - start < 2
    assert "--set a21=" in e.value.hint
    # Below the limit the same chain resolves, each key once.
    assert resolve_interpolations(_doubling(20))["a20"] == "x" * 2**20


def test_a_doubling_list_chain_stops_at_the_value_limit():
    data = {"l0": ["x"]}
    data.update({f"l{i}": [f"${{l{i - 1}}}", f"${{l{i - 1}}}"] for i in range(1, 61)})
    with pytest.raises(ConfigError, match=r"cannot resolve l\d+: its value would be larger than 1 MiB"):
        resolve_interpolations(data)


def test_many_references_to_one_large_value_hit_the_total_limit(monkeypatch):
    monkeypatch.setattr(interpolate, "MAX_WORK", 10_000)
    data = {"big": "y" * 1000, "refs": [f"${{big}}{i}" for i in range(20)]}
    with pytest.raises(
        ConfigError, match=r"refs\.\d+: .*more than 10000 characters, the limit for one config"
    ):
        resolve_interpolations(data)
    assert len(resolve_interpolations({"big": "y" * 1000, "refs": ["${big}"] * 5})["refs"]) == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": "${a}"}, r"cannot resolve a: interpolation cycle: a -> a"),
        ({"a": {"b": "x${a.b}"}}, r"cycle: a\.b -> a\.b"),
        (
            {**{f"k{i}": f"${{k{i + 1}}}" for i in range(100)}, "k100": 1},
            r"refer through more than 32 keys: k1 -> k2 -> k3 -> \.\.\.",
        ),
        ({"a": "${oc.env:X," * 200 + "y" + "}" * 200}, "deeper than 128 levels"),
    ],
)
def test_depth_and_cycles_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        resolve_interpolations(data)


def test_a_chain_within_the_limit_resolves():
    data = {**{f"k{i}": f"${{k{i + 1}}}" for i in range(20)}, "k20": 7}
    assert resolve_interpolations(data)["k0"] == 7


def test_interpolation_errors_take_the_callers_error_class():
    with pytest.raises(CheckpointError, match="cycle"):
        resolve_interpolations({"a": "${a}"}, source="ckpt/config.yaml", error=CheckpointError)


def test_a_large_plain_config_with_many_interpolations_is_fast():
    paths = [f"${{root}}/part-{i:05d}.npy" for i in range(50_000)]
    data = {"root": "/data", "run_name": "r", "save_folder": "runs/${run_name}", "data": {"paths": paths}}
    start = time.monotonic()
    out = resolve_interpolations(data)
    assert time.monotonic() - start < 5
    assert out["data"]["paths"][-1] == "/data/part-49999.npy" and out["save_folder"] == "runs/r"


# ---- booleans are not numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"model": {"n_layers": True}}, "model.n_layers: expected an integer, got the boolean true"),
        ({"model": {"d_model": False}}, "model.d_model: expected an integer, got the boolean false"),
        (
            {"optimizer": {"learning_rate": True}},
            "optimizer.learning_rate: expected a number, got the boolean",
        ),
        ({"optimizer": {"betas": [0.9, True]}}, r"optimizer.betas: expected a number, .* \(item 1\)"),
        ({"scheduler": {"t_max": True}}, "scheduler.t_max: expected an integer"),
        ({"max_duration": True}, "max_duration: expected an integer"),
        ({"epoch": True}, "epoch: expected an integer"),
        ({"module_outputs_save_steps": [1, True]}, r"module_outputs_save_steps: .* \(item 1\)"),
        ({"model": {"clip_qkv": True}}, "model.clip_qkv: expected a number"),
    ],
)
def test_booleans_are_refused_for_numbers(data, expected):
    with pytest.raises(ConfigError) as info:
        validate(data, source="x.yaml")
    assert any(re.search(expected, d) for d in info.value.details), info.value.details


def test_booleans_still_work_where_upstream_allows_them():
    cfg = validate(
        {"model": {"rope": True, "n_layers": 2}, "activation_checkpointing": True, "dry_run": True}
    )
    assert cfg.model.rope is True and cfg.model.n_layers == 2
    assert cfg.activation_checkpointing == "whole_layer"  # upstream's legacy `true`
    assert validate({"scheduler": {"t_max": "3e12"}}).scheduler.t_max == 3 * 10**12


def test_a_bool_from_set_is_reported_as_from_set(write_config):
    path = write_config({"model": {"n_layers": 2}})
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, overrides=["model.n_layers=true"])
    assert info.value.details == ["model.n_layers: expected an integer, got the boolean true (from --set)"]


# ---- --set ----------------------------------------------------------------------------------------


def test_set_without_a_value_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="override 'model.n_layers' has no value") as info:
        parse_override("model.n_layers")
    assert "--set model.n_layers=VALUE" in info.value.hint
    with pytest.raises(ConfigError, match="has no value"):
        apply_overrides({}, ["save_overwrite"])
    assert parse_override("save_overwrite=true") == (["save_overwrite"], True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=*m", r"--set model=\*m \(line 1, column 1\) uses the YAML alias \*m"),
        ("model=" + "[" * 1000, "deeper than 64 levels"),
        ("a" + ".a" * 100 + "=1", "more than 64 levels deep"),
        ("x=" + "y" * 100, None),
    ],
)
def test_set_values_have_the_limits_of_a_file(override, message):
    if message is None:  # a long but plain value is fine, and the message would shorten it
        assert parse_override(override)[1] == "y" * 100
        return
    with pytest.raises(ConfigError, match=message) as info:
        parse_override(override)
    assert len(info.value.message) < 200  # the override is shortened in the message
