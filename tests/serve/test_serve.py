"""`olmo serve` as a real process on 127.0.0.1, driven by the `openai` client and by raw HTTP: greedy
answers equal `olmo generate`'s, streams concatenate to the whole answer, echoed log-probabilities equal
the model's own, concurrent clients are batched and all correct, keys are required, malformed requests
get the API's 4xx errors (never a 500), a client that leaves frees its slot, a full queue answers 503,
and SIGTERM lets the request in flight finish."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.api._helpers import EXCHANGES, trained_chat_checkpoint
from tests.cli._helpers import clean_env, olmo_executable, run_olmo_here

KEY = "test-key-123"
NAME = "tiny-chat"


class Server:
    def __init__(self, ckpt: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [olmo_executable(), "serve", str(ckpt), "--port", "0", "--name", NAME, "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(COLUMNS="400"),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert found, f"olmo serve did not start: {line}{self.proc.stdout.read() if self.proc.poll() else ''}"
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, body: object, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=60, **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return trained_chat_checkpoint(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def server(ckpt) -> Iterator[Server]:
    running = Server(ckpt, "--api-key", KEY, "--max-batch", "8")
    yield running
    assert running.stop() == 0


def _generate(ckpt: Path, *args: str) -> list[dict]:
    out = run_olmo_here("generate", str(ckpt), *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["results"]


PROMPTS = ["Hi", "Name a river.", "What is", "Say something", "The Nile", "two plus", "You are", "Four"]


def test_completions_and_chat_equal_olmo_generate(server, ckpt):
    client = server.client()
    expected = _generate(ckpt, *[a for p in PROMPTS[:3] for a in ("-p", p)], "-n", "12")
    for prompt, want in zip(PROMPTS[:3], expected, strict=True):
        got = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
        assert got.choices[0].text == want["completion"]
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
            want["prompt_tokens"],
            want["completion_tokens"],
        )
        assert got.choices[0].finish_reason == {"eos": "stop"}.get(
            want["finish_reason"], want["finish_reason"]
        )
    for user, answer in EXCHANGES[:2]:
        want = _generate(ckpt, "--chat", "-p", user, "-n", "20")[0]["completion"]
        got = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": user}], max_tokens=20, temperature=0
        )
        assert got.choices[0].message.content == want == answer  # the model learned the exchange
        assert got.choices[0].finish_reason == "stop" and got.usage.prompt_tokens > 0


def test_streams_concatenate_to_the_whole_answer(server):
    client = server.client()
    whole = client.completions.create(model=NAME, prompt="Name a", max_tokens=16, temperature=0)
    pieces = client.completions.create(model=NAME, prompt="Name a", max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces if c.choices) == whole.choices[0].text
    messages = [{"role": "user", "content": EXCHANGES[2][0]}]
    whole_chat = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole_chat.choices[0].message.content == EXCHANGES[2][1]
    assert chunks[-1].usage.completion_tokens == whole_chat.usage.completion_tokens


def test_echo_logprobs_are_the_models_own(server, ckpt):
    import olmo_cli

    model = olmo_cli.load(ckpt)
    text = "Name a river. The Nile."
    got = server.client().completions.create(
        model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    logprobs = got.choices[0].logprobs
    ids = model.tokenizer.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(model.torch_module(torch.tensor([ids]))[0].double(), dim=-1)
    direct = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert logprobs.token_logprobs[0] is None and len(logprobs.token_logprobs) == len(ids)
    assert logprobs.token_logprobs[1:] == pytest.approx(direct, abs=1e-4)
    assert "".join(logprobs.tokens) == text == got.choices[0].text
    # The same sum as the Python API's log-likelihood scorer gives for the continuation.
    cont = model.loglikelihood("Name a river.", " The Nile.")
    n_cont = len(model.tokenizer.encode(" The Nile."))
    assert sum(logprobs.token_logprobs[-n_cont:]) == pytest.approx(cont, abs=1e-3)


def test_concurrent_clients_are_batched_and_all_correct(server, ckpt):
    # Each question of the trained exchanges twice, as a chat and as a plain completion of its chat prompt
    # text, all at once: every answer is the one `olmo generate --chat` gives alone. (Questions the model
    # knows: in text it has never seen, near-ties between logits may break differently in a batch, where
    # attention runs with a mask, than alone, as they may in any batched generation.)
    questions = [q for q, _ in EXCHANGES]
    alone = [
        _generate(ckpt, "--chat", "-p", q, "-n", "24", "--batch-size", "1")[0]["completion"]
        for q in questions
    ]
    assert alone == [a for _, a in EXCHANGES]
    client = server.client()
    start = threading.Barrier(2 * len(questions))

    def ask(job: tuple[str, int]) -> str:
        question, copy = job
        start.wait()
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
        )
        return reply.choices[0].message.content

    before = server.health()["decode_steps"]
    with ThreadPoolExecutor(2 * len(questions)) as pool:
        answers = list(pool.map(ask, [(q, c) for c in range(2) for q in questions]))
    assert answers == alone * 2
    health = server.health()
    assert health["largest_batch"] > 1  # they shared forward passes:
    assert health["decode_steps"] - before < sum(len(a) for a in answers)  # fewer steps than tokens


def test_sampling_with_a_seed_repeats_and_n_gives_choices(server):
    client = server.client()
    ask = dict(model=NAME, prompt="Say", max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=3)
    ask["extra_body"] = {"top_k": 20}  # an extension the client sends as it is
    first, second = client.completions.create(**ask), client.completions.create(**ask)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len({c.text for c in first.choices}) > 1  # three draws (seeds 7, 8, 9), not one repeated
    one = client.completions.create(**{**ask, "n": 1})
    assert first.usage.prompt_tokens == 3 * one.usage.prompt_tokens


def test_a_key_is_required_except_for_health(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    response = server.post("/v1/completions", {"model": NAME, "prompt": "Hi"}, key=None)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert server.health()["status"] == "ok"
    assert [m.id for m in server.client().models.list().data] == [NAME]
    assert server.client().models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4")


BAD_BODIES = [
    (b"not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": NAME}, 400, "prompt"),
    ({"model": NAME, "prompt": 5}, 400, "prompt: must be a string"),
    ({"model": NAME, "prompt": []}, 400, "empty list"),
    ({"model": NAME, "prompt": [[]]}, 400, "empty"),
    ({"model": NAME, "prompt": [10**9]}, 400, "outside the vocabulary"),
    ({"model": NAME, "prompt": "Hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "Hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": NAME, "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens 0"),
    ({"model": NAME, "prompt": "Hi", "max_tokens": 10**6}, 400, "context"),
    ({"model": NAME, "prompt": "Hi " * 500, "max_tokens": 1}, 400, "context"),
    ({"model": NAME, "prompt": "Hi", "temperature": 5}, 400, "temperature"),
    ({"model": NAME, "prompt": "Hi", "top_p": 0}, 400, "top_p"),
    ({"model": NAME, "prompt": "Hi", "n": 100}, 400, "n"),
    ({"model": NAME, "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": NAME, "prompt": "Hi", "stop": 3}, 400, "stop"),
    ({"model": NAME, "prompt": "Hi", "logprobs": 50}, 400, "logprobs"),
    ({"model": NAME, "prompt": "Hi", "seed": -1}, 400, "seed"),
    ({"model": NAME, "prompt": "Hi", "frequency_penalty": 1}, 400, "frequency_penalty"),
    ({"model": NAME, "prompt": "Hi", "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ({"model": NAME, "prompt": "Hi", "suffix": "x"}, 400, "suffix"),
    ({"model": "gpt-4", "prompt": "Hi"}, 404, "does not exist"),
    ({"model": NAME, "prompt": ["Hi"] * 10, "n": 16}, 400, "at most 72 at once"),
]
BAD_CHAT = [
    ({"model": NAME, "messages": []}, 400, "messages"),
    ({"model": NAME, "messages": "Hi"}, 400, "messages"),
    ({"model": NAME, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    ({"model": NAME, "messages": [{"content": "x"}]}, 400, "role"),
    ({"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
    ({"model": NAME, "messages": [{"role": "assistant", "content": "x"}]}, 400, "nothing to reply"),
    ({"model": NAME, "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, 400, "tools"),
    ({"model": NAME, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "logprobs"),
    ({"model": NAME, "messages": [{"role": "user", "content": "x " * 500}]}, 400, "context"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_BODIES)
def test_malformed_completions_get_the_apis_errors(server, body, status, says):
    response = server.post("/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["type"]


@pytest.mark.parametrize(("body", "status", "says"), BAD_CHAT)
def test_malformed_chats_get_the_apis_errors(server, body, status, says):
    response = server.post("/v1/chat/completions", body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_routes_methods_and_sizes(server):
    assert (
        httpx.get(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}).status_code
        == 405
    )
    assert server.post("/v1/nothing", {}).status_code == 404
    big = server.post("/v1/completions", b'{"prompt": "' + b"x" * (5 << 20) + b'"}')
    assert big.status_code == 413 and "larger than" in big.json()["error"]["message"]
    assert server.health()["status"] == "ok"  # none of it hurt the server


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    body = {"model": NAME, "prompt": "Hi", "max_tokens": 40, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers=headers, timeout=60
    ) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    deadline = time.monotonic() + 10
    while server.health()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["in_flight"] == 0


def test_a_full_queue_answers_503_and_sigterm_finishes_the_request_in_flight(tmp_path):
    # The tiny preset's model (random weights, 256 positions): 200 tokens take long enough (about half a
    # second and more) for the busy request and the signal to arrive while the first one runs.
    from tests._fixtures import tiny_config, write_checkpoint

    slow, _ = write_checkpoint(tmp_path, tiny_config())
    small = Server(slow, "--max-batch", "1", "--max-queue", "0")
    try:
        long = {"model": NAME, "prompt": "Hi", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(r=small.post("/v1/completions", long, key=None))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not small.health()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.005)
        busy = small.post("/v1/completions", {"model": NAME, "prompt": "Hi"}, key=None)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        small.proc.send_signal(signal.SIGTERM)  # while the long request runs
        worker.join(timeout=60)
        done = result["r"].json()
        assert result["r"].status_code == 200, done  # it finished all 200 tokens after the signal
        assert done["choices"][0]["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 200
        assert small.proc.wait(timeout=60) == 0
    finally:
        small.stop()


@pytest.mark.parametrize("kind", ["int4", "hf"])
def test_other_checkpoint_kinds_serve_what_generate_gives(ckpt, tmp_path, kind):
    if kind == "hf":
        made = run_olmo_here("convert-hf", str(ckpt), "--output", str(tmp_path / kind))
    else:
        made = run_olmo_here("quantize", str(ckpt), "--method", kind, "--output", str(tmp_path / kind))
    assert made.returncode == 0, made.stderr
    want = _generate(tmp_path / kind, "--chat", "-p", EXCHANGES[1][0], "-n", "16")[0]["completion"]
    other = Server(tmp_path / kind)
    try:
        got = other.client().chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": EXCHANGES[1][0]}], max_tokens=16, temperature=0
        )
        assert got.choices[0].message.content == want
    finally:
        assert other.stop() == 0


def test_the_readme_example_runs_as_written(ckpt, tmp_path):
    """The python block of the README's serving section, against `olmo serve runs/olmo-tiny` (only the
    port is changed: the example's 8000 may be taken here)."""
    import shutil
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Serving over HTTP: `olmo serve`", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    run = tmp_path / "runs" / "olmo-tiny"
    run.mkdir(parents=True)
    shutil.copytree(ckpt, run / ckpt.name)
    proc = subprocess.Popen(
        [olmo_executable(), "serve", "runs/olmo-tiny", "--port", "0", "--device", "cpu"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(COLUMNS="400"),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "'olmo-tiny'" in line, line
        port = re.search(r"127\.0\.0\.1:(\d+)/v1", line).group(1)
        assert "http://127.0.0.1:8000/v1" in code
        ran = subprocess.run(
            [sys.executable, "-c", code.replace(":8000/", f":{port}/")],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith(EXCHANGES[0][1])  # the trained reply to "Hi", then the stream
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _random_value(rng, depth: int = 0):
    kinds = ["int", "neg", "big", "float", "nan", "str", "empty", "bool", "null", "list", "dict", "ids"]
    kind = rng.choice(kinds if depth < 2 else kinds[:9])
    return {
        "int": lambda: rng.randint(0, 40),
        "neg": lambda: -rng.randint(1, 10**6),
        "big": lambda: 10 ** rng.randint(6, 30),
        "float": lambda: rng.uniform(-3, 3),
        "nan": lambda: rng.choice([float("nan"), float("inf"), -float("inf")]),
        "str": lambda: rng.choice(["Hi", "x" * 300, "\u0000", "é\ud800"[:1], NAME, "tool", "user"]),
        "empty": lambda: rng.choice(["", [], {}]),
        "bool": lambda: rng.choice([True, False]),
        "null": lambda: None,
        "list": lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
        "dict": lambda: {rng.choice(["role", "content", "type", "text", "x"]): _random_value(rng, depth + 1)},
        "ids": lambda: [rng.randint(-5, 5000) for _ in range(rng.randint(0, 6))],
    }[kind]()


FIELDS = [
    *("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k"),
    *("stop", "seed", "n", "stream", "stream_options", "logprobs", "top_logprobs", "echo", "ignore_eos"),
    *("best_of", "suffix", "logit_bias", "tools", "response_format", "presence_penalty"),
]


def test_no_random_request_gets_a_500(server):
    # Bodies made of random values for the API's fields (a fixed seed): every answer is a 2xx or a 4xx
    # with the API's error JSON, and the server stays healthy.
    import math
    import random

    rng = random.Random(1234)
    statuses = collections.Counter()
    for _ in range(300):
        body = {field: _random_value(rng) for field in rng.sample(FIELDS, rng.randint(1, 8))}
        body.setdefault("model", NAME)
        if rng.random() < 0.5:
            body["prompt" if rng.random() < 0.5 else "messages"] = (
                "Hi" if "prompt" not in body else [{"role": "user", "content": "Hi"}]
            )
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
            body["max_tokens"] = 8
        raw = json.dumps(body, allow_nan=True).encode()
        route = rng.choice(["/v1/completions", "/v1/chat/completions"])
        response = server.post(route, raw)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (route, body, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert not math.isnan(response.elapsed.total_seconds())
    assert statuses[200] >= 3 and sum(v for k, v in statuses.items() if k >= 400) > 100, statuses
    assert server.health()["in_flight"] == 0
