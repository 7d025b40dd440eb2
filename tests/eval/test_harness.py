"""lm-evaluation-harness on our model (the `olmo-cli` model class) against the harness's own `hf` backend
on the HF-converted copy of the same checkpoint: the same scores, log-likelihoods, rolling
log-likelihoods and greedy generations.

The harness is an optional extra: `pip install "lm-eval[hf]"` (these tests skip without it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="optional extra: pip install 'lm-eval[hf]'")
pytest.importorskip("accelerate", reason="optional extra: the harness's hf backend needs accelerate")

from lm_eval.api.instance import Instance  # noqa: E402

from olmo_cli.convert.export import export_hf  # noqa: E402
from olmo_cli.errors import NetworkError, UsageError  # noqa: E402
from olmo_cli.eval.formats import Doc  # noqa: E402
from olmo_cli.eval.harness import export_harness_task, harness_lm, run_harness  # noqa: E402
from olmo_cli.eval.taskfile import TaskData  # noqa: E402
from olmo_cli.load.build import load_model, load_tokenizer  # noqa: E402
from olmo_cli.load.read import read_checkpoint  # noqa: E402
from tests._fixtures import write_checkpoint  # noqa: E402
from tests.cli._helpers import run_olmo_here  # noqa: E402
from tests.convert._helpers import tiny_train_config  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    native, _ = write_checkpoint(root, tiny_train_config())
    found = read_checkpoint(native)
    export_hf(found, load_tokenizer(found), root / "hf")
    docs = [
        Doc.shared_context(
            f"Question: what is {i} plus {i}?\nAnswer:", [f" {2 * i}", f" {2 * i + 1}", " many things"], i % 3
        )
        for i in range(10)
    ]
    name = export_harness_task(TaskData("sums", "acc", docs), root / "tasks")
    return native, root / "hf", root / "tasks", name, root


@pytest.fixture(autouse=True)
def offline_cache(monkeypatch, setup):
    import datasets
    import huggingface_hub.constants

    cache = setup[4] / "hf-datasets-cache"
    for key, value in {**OFFLINE, "HF_DATASETS_CACHE": str(cache)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    # The libraries read the offline switches once, at import: set their copies too, or a Hub fetch
    # tries the network (half a minute of retries without one, a download with one).
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def models(setup):
    from lm_eval.models.huggingface import HFLM

    native, hf_dir, *_ = setup
    found = read_checkpoint(native)
    ours = harness_lm(load_model(found), load_tokenizer(found), batch_size=4)
    theirs = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=4)
    return ours, theirs


def test_multiple_choice_scores_agree(setup, models):
    _, _, tasks, name, _ = setup
    ours, theirs = (run_harness(m, [name], include_path=tasks)["results"][name] for m in models)
    assert ours["acc,none"] == theirs["acc,none"]
    assert ours["acc_stderr,none"] == pytest.approx(theirs["acc_stderr,none"])


def _requests(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihoods_agree(models):
    pairs = [
        ("The capital of France is", " Paris"),
        ("", "an empty context"),
        ("Numbers: 1 2 3", " 4 5 6 7 8"),
        ("tab\tand  spaces ", " continue"),
        ("x " * 200, " beyond the window"),
    ]
    ours, theirs = (m.loglikelihood(_requests("loglikelihood", pairs)) for m in models)
    np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=1e-5, atol=1e-4)
    assert [g for _, g in ours] == [g for _, g in theirs]


def test_rolling_loglikelihoods_agree(models):
    texts = [("A short text.",), ("Longer text that needs several windows of the model's context. " * 12,)]
    ours, theirs = (m.loglikelihood_rolling(_requests("loglikelihood_rolling", texts)) for m in models)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_greedy_generations_agree(models):
    gen = {"until": ["\n\n", "."], "max_gen_toks": 12, "do_sample": False}
    prompts = [("Once upon a time", gen), ("def f(x):", {**gen, "until": ["return"]})]
    ours, theirs = (m.generate_until(_requests("generate_until", prompts)) for m in models)
    assert ours == theirs


def test_cli_harness_matches_the_hf_backend(setup, models):
    native, _, tasks, name, _ = setup
    # Through main in this process (offline_cache has set the environment): the harness and torch are
    # imported already, which saves the seconds a fresh interpreter would spend on them.
    proc = run_olmo_here("eval", str(native), "--harness", name, "--harness-include", str(tasks), "--json")
    assert proc.returncode == 0, proc.stderr
    harness = json.loads(proc.stdout)["harness"]
    expected = run_harness(models[1], [name], include_path=tasks)["results"][name]
    assert harness["results"][name]["acc,none"] == expected["acc,none"]
    assert harness["n-samples"][name]["effective"] == 10


def test_unknown_harness_task(setup, models):
    with pytest.raises(UsageError, match="unknown harness task"):
        run_harness(models[0], ["no_such_task_anywhere"], include_path=setup[2])


def test_a_task_whose_data_cannot_be_fetched_is_one_network_error(setup, models):
    """arc_easy reads allenai/ai2_arc from the Hub; offline with an empty cache that is a NetworkError
    (exit 5) with a hint, not the `datasets` traceback."""
    with pytest.raises(NetworkError) as info:
        run_harness(models[0], ["arc_easy"], include_path=setup[2], limit=1)
    assert info.value.exit_code == 5 and "Hugging Face Hub" in (info.value.hint or "")
