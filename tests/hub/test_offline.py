"""Offline is fast (olmo_cli/offline.py): `OLMO_OFFLINE=1` and `HF_HUB_OFFLINE=1` refuse before any
request leaves (the loopback server sees none), and without a switch a host name that does not resolve
(`.invalid` names never do, RFC 6761) is one error at once instead of half a minute of retries, for every
command that downloads: checkpoint listings and downloads, the Hub, URL inputs of `data tokenize`,
harness task data, and the sizes of URL data in `train --dry-run` (which still prints its plan)."""

from __future__ import annotations

import time

import pytest
import requests

from olmo_cli import offline
from olmo_cli.errors import NetworkError
from olmo_cli.hub.http import request
from tests.cli._helpers import run_olmo_here
from tests.security._data_inputs import one_error

from ._helpers import add_index, run_cli

# Far below the 31-47 s the retries took before; generous for a loaded machine.
DEADLINE_S = 15


def _timed(call):
    started = time.monotonic()
    proc = call()
    return proc, time.monotonic() - started


def test_olmo_offline_refuses_before_any_request(server, tmp_path):
    index = add_index(server, [1000, 2000])
    download = ["download", "--index", index, "--step", "1000", "-o", str(tmp_path / "d")]
    for command in (["list", "--index", index], download):
        proc = run_cli(*command, tmp=tmp_path, env={"OLMO_OFFLINE": "1"})
        line = one_error(proc, 5)
        assert "OLMO_OFFLINE is set" in line and "unset OLMO_OFFLINE" in proc.stderr
    assert server.log == []
    # An index read once is cached: listed again with the switch on, from the cache, without a request.
    assert run_cli("list", "--index", index, tmp=tmp_path).returncode == 0
    server.reset_log()
    proc = run_cli("list", "--index", index, "--json", tmp=tmp_path, env={"OLMO_OFFLINE": "1"})
    assert proc.returncode == 0 and "2000" in proc.stdout
    assert server.log == []


def test_hf_hub_offline_keeps_the_hub_off_the_network_and_nothing_else(server, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": server.base_url}
    proc = run_cli("list", "--model", "olmo2-1b", "--source", "hf", tmp=tmp_path, env=env)
    assert "HF_HUB_OFFLINE is set" in one_error(proc, 5)
    assert server.log == []
    # A checkpoint index elsewhere is not the Hub: HF_HUB_OFFLINE leaves it alone.
    index = add_index(server, [1000], path="elsewhere/index.csv")
    proc = run_cli("list", "--index", index, tmp=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["list", "--index", "https://olmo-index.invalid/OLMo-1B.csv"],
        ["list", "--model", "olmo2-1b", "--source", "hf"],
    ],
    ids=["index", "hub"],
)
def test_an_unresolved_host_is_one_error_at_once(tmp_path, command):
    env = {"HF_ENDPOINT": "https://hub.invalid"}
    proc, seconds = _timed(lambda: run_cli(*command, tmp=tmp_path, env=env))
    line = one_error(proc, 5)
    assert ".invalid does not resolve" in line and "OLMO_OFFLINE=1" in proc.stderr
    assert seconds < DEADLINE_S


def test_data_tokenize_of_a_url_offline(tmp_path):
    url = "https://docs.invalid/corpus/a.jsonl.gz"
    args = ["data", "tokenize", url, "-t", "builtin:tiny-bpe-4096", "-o", str(tmp_path / "out")]
    proc, seconds = _timed(lambda: run_olmo_here(*args, cwd=tmp_path))
    assert "docs.invalid does not resolve" in one_error(proc, 5) and seconds < DEADLINE_S
    proc = run_olmo_here(*args, cwd=tmp_path, OLMO_OFFLINE="1")
    assert "OLMO_OFFLINE is set" in one_error(proc, 5)
    assert not (tmp_path / "out").exists()


def test_a_dry_run_of_url_data_prints_its_plan_offline(tmp_path):
    args = ["train", "--preset", "tiny", "--dry-run", "--no-wandb", "--save-folder", str(tmp_path / "run")]
    args += ["--data", "http://olmo-data.invalid/part-000-00000.npy", "--set", "max_duration=100"]
    proc, seconds = _timed(lambda: run_olmo_here(*args, cwd=tmp_path, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    assert "steps trained (stop step)" in proc.stdout and "stops after step 110" in proc.stdout
    assert "the data's sizes could not be read" in proc.stderr and "olmo-data.invalid" in proc.stderr
    assert seconds < DEADLINE_S
    # A real run needs the sizes: it stops at the same one error.
    proc = run_olmo_here(*[a for a in args if a != "--dry-run"], cwd=tmp_path, OLMO_OFFLINE="1")
    assert "OLMO_OFFLINE is set" in one_error(proc, 5)


def test_harness_data_offline_with_nothing_cached_is_refused_before_the_model_loads(checkpoint, tmp_path):
    from olmo_cli.eval.harness import harness_available

    if not harness_available():  # the dev extra installs lm-eval; without it --harness says so instead
        proc = run_olmo_here("eval", str(checkpoint), "--harness", "hellaswag", cwd=tmp_path)
        assert "needs lm-evaluation-harness" in one_error(proc, 2)
        return
    env = {"HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(tmp_path / "hf")}
    proc, seconds = _timed(
        lambda: run_olmo_here("eval", str(checkpoint), "--harness", "hellaswag", cwd=tmp_path, **env)
    )
    line = one_error(proc, 5)
    assert "cannot be reached" in line and "hub.invalid" in line and "--harness-include" in proc.stderr
    assert seconds < DEADLINE_S


def test_only_a_host_never_reached_counts_as_offline(monkeypatch):
    # A name that does not resolve, from a host that has not answered in this process: no network.
    with pytest.raises(NetworkError, match="never-seen.invalid does not resolve"):
        request("GET", "https://never-seen.invalid/x", timeout=(5, 5))
    # The same failure after the host answered once is a hiccup: requests' error, which the callers retry.
    offline.note_reached("https://answered-before.invalid/")
    with pytest.raises(requests.ConnectionError) as caught:
        request("GET", "https://answered-before.invalid/x", timeout=(5, 5))
    assert offline.is_unresolved_host(caught.value)
    assert not offline.is_unresolved_host(requests.ConnectionError("connection refused"))


def test_the_switches_read_as_people_write_them(monkeypatch):
    for value, on in [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("no", False)]:
        monkeypatch.setenv("OLMO_OFFLINE", value)
        assert (offline.offline_switch("https://example.org/x") == "OLMO_OFFLINE") is on
    monkeypatch.delenv("OLMO_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org")
    assert offline.offline_switch("https://huggingface.co/api/models/x") == "HF_HUB_OFFLINE"
    assert offline.offline_switch("https://mirror.example.org/api/models/x") == "HF_HUB_OFFLINE"
    assert offline.offline_switch("https://olmo-data.org/part-0.npy") is None
