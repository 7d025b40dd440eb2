"""What a user sees when their input is wrong, through the real `olmo` entry point: one `error:` line
(plus details and a hint), exit status 2 for usage and config errors, no traceback unless --debug.
And an upstream OLMo config file loads as it is, with what olmo ignores reported by name.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests._upstream_config import upstream_style_config

from ._helpers import run_olmo


def _write(tmp_path: Path, data: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _assert_user_error(proc: subprocess.CompletedProcess[str], exit_code: int = 2) -> str:
    """The house error shape; returns stderr for the specific checks."""
    err = proc.stderr
    assert proc.returncode == exit_code, f"exit {proc.returncode}, stderr:\n{err}"
    assert "Traceback" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, f"expected one 'error:' line:\n{err}"
    assert proc.stdout == "", "nothing goes to stdout when the command fails"
    return err


def _show_config(tmp_path: Path, data: object, *args: str) -> subprocess.CompletedProcess[str]:
    path = _write(tmp_path, data)
    return run_olmo("presets", "show", "--config", path.name, *args, cwd=tmp_path)


# ---- config errors ---------------------------------------------------------------------------------


def test_misspelled_key_names_the_path_and_the_closest_key(tmp_path):
    err = _assert_user_error(_show_config(tmp_path, {"model": {"n_layres": 4}}))
    assert "model.n_layres" in err
    assert "n_layers" in err.replace("n_layres", "")  # suggested, not just echoed back
    assert "config.yaml" in err  # which file


def test_out_of_range_value_names_the_field_and_the_value(tmp_path):
    err = _assert_user_error(_show_config(tmp_path, {"optimizer": {"learning_rate": -3e-4}}))
    (line,) = [line for line in err.splitlines() if "optimizer.learning_rate" in line]
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)]
    assert -3e-4 in numbers, f"the bad value is not shown: {line}"
    assert "greater than 0" in line  # and what was expected


def test_several_bad_values_are_reported_together(tmp_path):
    data = {"model": {"n_layers": 0}, "optimizer": {"learning_rate": -1.0}}
    err = _assert_user_error(_show_config(tmp_path, data))
    assert "model.n_layers" in err and "optimizer.learning_rate" in err


def test_unknown_key_from_set_says_it_came_from_set(tmp_path):
    proc = run_olmo("presets", "show", "tiny", "--set", "model.n_layres=3", cwd=tmp_path)
    err = _assert_user_error(proc)
    assert "model.n_layres" in err and "n_layers" in err.replace("n_layres", "")
    assert "--set" in err


def test_set_value_with_bad_yaml(tmp_path):
    err = _assert_user_error(run_olmo("presets", "show", "tiny", "--set", "model.d_model=[1", cwd=tmp_path))
    assert "model.d_model=[1" in err


def test_set_applies_before_validation(tmp_path):
    # The positive case of the two above: a valid --set changes the resolved config.
    proc = run_olmo("presets", "show", "tiny", "--json", "--set", "model.n_layers=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["model"]["n_layers"] == 3


def test_unknown_preset_suggests_the_closest(tmp_path):
    err = _assert_user_error(run_olmo("presets", "show", "7b-0742", cwd=tmp_path))
    assert "7b-0742" in err
    assert "did you mean '7b-0724'" in err


def test_missing_config_file(tmp_path):
    err = _assert_user_error(run_olmo("presets", "show", "--config", "no-such.yaml", cwd=tmp_path))
    assert "no-such.yaml" in err


def test_invalid_yaml_names_the_line(tmp_path):
    text = "run_name: demo\nmodel:\n  d_model: 64\n  n_heads: [1\nseed: 3\n"
    err = _assert_user_error(_show_config(tmp_path, text))
    assert "config.yaml" in err
    assert re.search(r"line [45]\b", err), err  # the unclosed list opens on 4, the parser stops at 5


def test_config_that_is_not_a_mapping(tmp_path):
    err = _assert_user_error(_show_config(tmp_path, "- a\n- b\n"))
    assert "mapping" in err


@pytest.mark.parametrize("args", [[], ["tiny", "--config", "x.yaml"]], ids=["neither", "both"])
def test_show_needs_exactly_one_of_name_and_config(tmp_path, args):
    _write(tmp_path, {}, "x.yaml")
    err = _assert_user_error(run_olmo("presets", "show", *args, cwd=tmp_path))
    assert "--config" in err and "--preset" not in err  # `show` takes the preset as NAME


def test_debug_shows_the_traceback(tmp_path):
    path = _write(tmp_path, {"model": {"n_layres": 4}})
    proc = run_olmo("--debug", "presets", "show", "--config", path.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr and "model.n_layres" in proc.stderr


# ---- an upstream OLMo config loads as it is ---------------------------------------------------------

NOT_ACTED_ON = {"model.flash_attention", "sharded_checkpointer"}


@pytest.fixture(scope="module")
def upstream_json(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("upstream")
    proc = _show_config(tmp_path, upstream_style_config(), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_upstream_config_resolves_interpolations(upstream_json):
    cfg = upstream_json["config"]
    assert cfg["wandb"]["name"] == cfg["run_name"] == "OLMo-1.7-7B"
    assert cfg["wandb"]["group"] == cfg["run_name"]
    assert cfg["save_folder"] == "runs/OLMo-1.7-7B"
    assert cfg["device_eval_batch_size"] == cfg["device_train_microbatch_size"] == 2
    assert cfg["scheduler"]["t_max"] == 3_000_000_000_000 and cfg["max_duration"] == "2ep"
    assert [e["label"] for e in cfg["evaluators"]] == ["all-small-ppl-validation", "piqa", "hellaswag"]
    assert "c4_en-validation" in cfg["evaluators"][0]["data"]["datasets"]
    assert cfg["model"]["clip_qkv"] == 8.0


def test_upstream_config_has_the_published_parameter_count(upstream_json):
    # OLMo-7B-0724: 6,888,095,744 parameters (the README's figure for the 7B architecture).
    assert upstream_json["derived"]["params"] == 6_888_095_744


def test_upstream_config_lists_what_olmo_ignores(upstream_json):
    listed = {item["key"]: item for item in upstream_json["not_acted_on"]}
    assert set(listed) == NOT_ACTED_ON
    assert listed["model.flash_attention"]["value"] is True
    assert listed["sharded_checkpointer"]["value"] == "olmo_core"
    assert all(item["why"] for item in listed.values())


def test_upstream_config_reports_ignored_settings_on_stderr(tmp_path):
    proc = _show_config(tmp_path, upstream_style_config())
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr
    assert all(key in proc.stderr for key in NOT_ACTED_ON)
    # A message, not part of the result: stdout stays the resolved config and the derived numbers.
    assert "warning" not in proc.stdout and "not acted on" not in proc.stdout
    assert proc.stdout.startswith("# config.yaml")


# ---- parse errors from Typer itself get the same shape ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("presets", "shw"), "Did you mean 'show'?"),
        (("presets", "show", "7b", "--gpus", "0"), "--gpus"),
        (("presets", "list", "--nope"), "--nope"),
    ],
)
def test_usage_errors_are_one_line_with_a_hint(args, expected):
    err = _assert_user_error(run_olmo(*args))
    assert expected in err
    assert "hint: run 'olmo presets" in err and "--help' for usage" in err
    assert "╭" not in err  # not Typer's boxed panel


def test_no_arguments_prints_help_and_succeeds():
    proc = run_olmo()
    assert proc.returncode == 0
    assert "presets" in proc.stdout and "Usage" in proc.stdout


def test_brackets_in_messages_are_shown_as_written(capsys):
    """Messages and hints are plain text: `[a.npy,b.npy]` or a JSON shape must not be eaten as markup."""
    from olmo_cli import ui

    ui.print_error("bad value [x] in [bold]", hint="--set data.paths=[a.npy,b.npy]")
    ui.warn("skipped [mmlu]")
    err = capsys.readouterr().err
    assert "error: bad value [x] in [bold]" in err
    assert "hint: --set data.paths=[a.npy,b.npy]" in err
    assert "warning: skipped [mmlu]" in err
