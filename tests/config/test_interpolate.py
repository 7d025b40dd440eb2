"""`${...}` interpolations as upstream configs use them."""

import pytest

from olmo_cli.config.interpolate import resolve_interpolations
from olmo_cli.errors import ConfigError


def test_references_keep_type_and_concatenate():
    data = {
        "run_name": "OLMo-7B",
        "device_train_microbatch_size": 2,
        "device_eval_batch_size": "${device_train_microbatch_size}",
        "save_folder": "runs/${run_name}",
        "wandb": {"name": "${run_name}"},
        "model": {"d_model": 64},
        "note": "${model.d_model}x${device_train_microbatch_size}",
    }
    out = resolve_interpolations(data)
    assert out["device_eval_batch_size"] == 2
    assert out["save_folder"] == "runs/OLMo-7B"
    assert out["wandb"]["name"] == "OLMo-7B"
    assert out["note"] == "64x2"


def test_env_with_nested_default(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("SCRATCH", "/scratch")
    data = {"run_name": "r", "a": "${oc.env:SCRATCH}/x", "b": "${oc.env:SLURM_JOB_ID,${run_name}}"}
    out = resolve_interpolations(data)
    assert out == {"run_name": "r", "a": "/scratch/x", "b": "r"}


def test_path_resolvers(tmp_path):
    for name in ("b.npy", "a.npy", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    for name in ("step10", "step20-unsharded", "step20", "step9-unsharded", "latest"):
        (tmp_path / "run" / name).mkdir(parents=True)
    data = {
        "paths": f"${{path.glob:{tmp_path}/*.npy,{tmp_path}/*.txt}}",
        "chosen": f"${{path.choose:{tmp_path}/missing,{tmp_path}/a.npy}}",
        "url": "${path.choose:/nope,https://olmo-data.org/x}",
        "last": f"${{path.last_checkpoint:{tmp_path}/run}}",
    }
    out = resolve_interpolations(data)
    assert out["paths"] == [str(tmp_path / n) for n in ("a.npy", "b.npy", "c.txt")]
    assert out["chosen"] == str(tmp_path / "a.npy")
    assert out["url"] == "https://olmo-data.org/x"
    assert out["last"] == str(tmp_path / "run" / "step20")  # a tie prefers the sharded directory


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": "${oc.env:OLMO_TEST_SURELY_UNSET}"}, "cannot resolve a: environment variable OLMO_TEST"),
        ({"a": {"b": "${nope}"}}, r"cannot resolve a\.b: '\$\{nope\}' refers to a key"),
        ({"a": "${b}", "b": "${a}"}, "cycle"),
        ({"a": "${path.glob:/surely/not/here/*.npy}"}, "no file matches"),
        ({"a": "${foo.bar:1}"}, "unknown resolver 'foo.bar'"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_interpolations(data, source="x.yaml")
    assert "--set" in info.value.hint
