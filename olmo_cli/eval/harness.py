"""lm-evaluation-harness on our model: a model class registered as `olmo-cli`, so any harness task runs
through our engine (`olmo eval CKPT --harness TASKS`), and `run_harness` to call it.

The harness is an optional extra (`pip install lm-eval`): nothing here imports it until it is used, so
this module loads without it. The class implements the harness's model contract (docs/format.md
§9.5) on the same scorer as `olmo eval --tasks`:
- loglikelihood: the harness tokenizes (context, continuation) itself (TemplateLM); we score the
  token pairs, `(context + continuation)[-(max_length + 1):]` as its `hf` backend does;
- loglikelihood_rolling: the harness's disjoint rolling windows of `max_length` tokens, summed;
- generate_until: greedy decoding with our KV cache, stopping at EOS, any `until` string or
  `max_gen_toks`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from olmo_cli.errors import NetworkError, UsageError
from olmo_cli.eval.requests import Request
from olmo_cli.eval.scoring import score_requests
from olmo_cli.offline import HF_DEFAULT_ENDPOINT, offline_switch, resolves

if TYPE_CHECKING:
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.eval.taskfile import TaskData

__all__ = [
    "MODEL_NAME",
    "check_harness_data_reachable",
    "export_harness_task",
    "harness_available",
    "harness_lm",
    "lm_class",
    "run_harness",
]

MODEL_NAME = "olmo-cli"
INSTALL_HINT = "pip install 'olmo-cli[eval]' (or 'lm-eval[hf]'): the harness is an optional extra"
_CLASS: type | None = None


def harness_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


class _OlmoHarnessMethods:
    """The harness model contract on an OLMo; combined with the harness's TemplateLM by `lm_class`."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: Any = None,
        tokenizer: ResolvedTokenizer | None = None,
        batch_size: int | str = 32,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()  # type: ignore[call-arg]
        if model is None:
            model, tokenizer = _load(pretrained, device, dtype)
        if tokenizer is None:
            raise UsageError("the olmo-cli harness model needs the model's tokenizer")
        self.model = model.eval()
        self.olmo_tokenizer = tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self._max_length = max_length or model.config.max_sequence_length

    # -- tokenization hooks of TemplateLM -------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.olmo_tokenizer.identity.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.olmo_tokenizer.encode(string, add_special_tokens=False)  # OLMo has no BOS

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.olmo_tokenizer.decode(list(tokens))

    # -- scoring --------------------------------------------------------------------------------
    def _score_pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        requests = []
        for ctx, cont in pairs:
            tokens = (list(ctx) + list(cont))[-(self.max_length + 1) :]
            requests.append(Request(tuple(tokens), min(len(cont), len(tokens) - 1)))
        pad = self.olmo_tokenizer.identity.pad_token_id
        scores = score_requests(self.model, requests, batch_size=self.batch_size, pad_token_id=pad)
        return list(zip(scores.loglikelihood.tolist(), scores.greedy.tolist(), strict=True))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        results = self._score_pairs([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)  # type: ignore[attr-defined]
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            rolling = utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,  # type: ignore[attr-defined]
                max_seq_len=self.max_length,
                context_len=1,
            )
            for window in map(utils.make_disjoint_window, rolling):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (ll, _) in zip(owners, self._score_pairs(windows), strict=True):
            totals[owner] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)  # type: ignore[attr-defined]
        return totals

    @torch.inference_mode()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        from olmo_cli.model.generate import GenerationSettings, generate_text

        ids = self.olmo_tokenizer.identity
        outputs = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_new) :] or [ids.eos_token_id]
            settings = GenerationSettings(
                max_new, 0.0, eos_token_id=ids.eos_token_id, pad_token_id=ids.pad_token_id
            )
            (done,) = generate_text(self.model, self.olmo_tokenizer, [prompt], settings, stop_strings=until)
            outputs.append(done.text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), done.text)  # type: ignore[attr-defined]
        return outputs


def lm_class() -> type:
    """The harness model class (built on first use, registered as `olmo-cli`)."""
    global _CLASS
    if _CLASS is None:
        if not harness_available():
            raise UsageError("lm-evaluation-harness is not installed", hint=INSTALL_HINT)
        from lm_eval.api.model import TemplateLM
        from lm_eval.api.registry import register_model

        _CLASS = register_model(MODEL_NAME)(type("OlmoHarnessLM", (_OlmoHarnessMethods, TemplateLM), {}))
    return _CLASS


def harness_lm(
    model: Any, tokenizer: ResolvedTokenizer, *, batch_size: int = 32, max_length: int | None = None
) -> Any:
    return lm_class()(model=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _load(pretrained: str | None, device: str | None, dtype: str | None) -> tuple[Any, ResolvedTokenizer]:
    from olmo_cli.load.build import load_model, load_tokenizer
    from olmo_cli.load.read import read_checkpoint

    if pretrained is None:
        raise UsageError("the olmo-cli harness model needs pretrained=CHECKPOINT")
    found = read_checkpoint(pretrained)
    torch_dtype = torch.bfloat16 if dtype in ("bf16", "bfloat16") else torch.float32
    return load_model(found, device=device or "cpu", dtype=torch_dtype), load_tokenizer(found)


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be used now (a switch, or its host name not resolving), or None."""
    endpoint = os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
    switch = offline_switch(endpoint)
    if switch is not None:
        return f"{switch} is set"
    return None if resolves(endpoint) else f"the host name of {endpoint} does not resolve"


def _cached_hub_datasets() -> bool:
    """Whether the Hugging Face caches hold any dataset (the `datasets` cache, or the Hub's)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or home / "hub").expanduser()
    try:
        in_datasets = datasets_cache.is_dir() and any(p.is_dir() for p in datasets_cache.iterdir())
        return in_datasets or (hub_cache.is_dir() and any(hub_cache.glob("datasets--*")))
    except OSError:
        return False


def check_harness_data_reachable() -> None:
    """Harness tasks read their data from the Hub: without a network and with nothing cached, this is the
    error, in a second, instead of after loading the model, indexing the tasks and the libraries' retries."""
    why = _hub_unreachable()
    if why is None or _cached_hub_datasets():
        return
    raise NetworkError(
        f"harness task data comes from the Hugging Face Hub, which cannot be reached ({why}), and no "
        "dataset is cached under ~/.cache/huggingface",
        hint="run once with the network to cache the tasks' data (later runs use the cache offline), or give "
        "local tasks with --harness-include DIR",
    )


@contextlib.contextmanager
def _hub_offline_when_unreachable() -> Iterator[None]:
    """Without a network (OLMO_OFFLINE, HF_HUB_OFFLINE, or the Hub's host name not resolving), the Hugging
    Face libraries run in their offline mode: cached task data is used, and what is not cached fails at
    once instead of after their half a minute of retries. Restored afterwards."""
    if _hub_unreachable() is None:
        yield
        return
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    attributes = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")]
    attributes += [("datasets.config", "HF_DATASETS_OFFLINE")]
    saved_attributes = []
    os.environ.update({name: "1" for name in names})
    for module_name, attribute in attributes:
        module = sys.modules.get(module_name)  # read at import by the libraries: set where imported
        if module is not None and hasattr(module, attribute):
            saved_attributes.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, True)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for module, attribute, value in saved_attributes:
            setattr(module, attribute, value)


@functools.cache
def _task_manager(include_path: str | None) -> Any:
    """The harness's task index (it reads every task YAML it has, seconds of work): built once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def run_harness(
    lm: Any,
    tasks: Sequence[str],
    *,
    include_path: Path | str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Runs harness tasks on a harness model; returns {task: {metric: value, ...}, ...} plus versions
    and sample counts, as the harness reports them."""
    from lm_eval import simple_evaluate

    manager = _task_manager(str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UsageError(
            f"unknown harness task(s): {', '.join(unknown)}",
            hint="see `lm-eval ls tasks`; local task YAMLs are found with --harness-include DIR",
        )
    try:
        with _hub_offline_when_unreachable():
            found = simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=manager,
                limit=limit,
                log_samples=False,
                bootstrap_iters=1000,
            )
    except ConnectionError as exc:  # `datasets` could not fetch a task's data from the Hub
        raise NetworkError(
            f"harness task data could not be downloaded: {exc}",
            hint="harness tasks read their datasets from the Hugging Face Hub: run once with network (they "
            "are cached under ~/.cache/huggingface), then HF_DATASETS_OFFLINE=1 uses the cache",
        ) from None
    assert found is not None  # None only on non-zero ranks
    return {
        "results": found["results"],
        "versions": found.get("versions", {}),
        "n-samples": found.get("n-samples", {}),
    }


def export_harness_task(task: TaskData, directory: Path | str) -> str:
    """Writes `task` as a local harness task (`{name}.jsonl` + `{name}.yaml` in `directory`, found with
    `include_path`): the same requests, so the harness and `olmo eval` score the same thing. Returns the
    harness task name. Only documents whose choices share one context can be expressed this way."""
    import json

    from olmo_cli.atomic import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, doc in enumerate(task.docs):
        if len(set(doc.contexts)) != 1:
            raise UsageError(f"task {task.name} document {i} has several contexts; harness tasks need one")
        rows.append(
            json.dumps(
                {"context": doc.contexts[0], "continuations": list(doc.continuations), "gold": doc.gold}
            )
        )
    name = f"olmo_{task.name}"
    data = directory / f"{name}.jsonl"
    atomic_write_text(data, "\n".join(rows) + "\n")
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "continuations",
        "doc_to_target": "gold",
        "target_delimiter": "",  # our continuations carry their leading space
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    atomic_write_text(directory / f"{name}.yaml", json.dumps(spec, indent=2) + "\n")  # JSON is YAML
    return name
