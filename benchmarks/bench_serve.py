"""Serving throughput and latency of `olmo serve` against a naive server of the same model, same run.

One random model from a preset (default: tiny, as bench_generate.py makes it) is written as a native
checkpoint and exported to Hugging Face. Two servers run as their own processes, so that neither shares
a GIL with the client threads nor with the other, both with --threads torch threads:
- ours: `olmo serve` on the native checkpoint (continuous batching, --max-batch 16);
- the reference: this script's `--baseline-server HF_DIR` mode, a stdlib ThreadingHTTPServer answering
  POST /v1/completions with transformers' `generate` per request, one request at a time under a lock
  (naive serving), streaming each token as a server-sent event as soon as `generate` hands it over;
  or, with --reference llama-cpp (the default where `llama_cpp.server` can be imported), llama-cpp-python's
  OpenAI-compatible server on our GGUF export of the same model (`olmo quantize --gguf f32`, f16 for
  bf16), with --threads threads. It gets the prompt as text (its server takes no token ids), and so does
  olmo serve then; greedy texts are compared instead of token ids.
Every request sends the same --prompt-len random token ids, greedy, and asks for --max-tokens tokens
that EOS never cuts short (`ignore_eos` for ours, `min_new_tokens` for transformers). At each
concurrency C, C client threads each send --requests requests back to back, streaming, which measures
time to first token (TTFT) and whole-request latency; throughput is all generated tokens over the wall
time of the level. Repetitions are interleaved (ours then theirs, then theirs then ours, ...) so that
load from others sharing the machine hits both alike; the median tok/s counts, min-max shows the
spread, latency percentiles pool every request of every repetition. First one greedy request to each
checks that both generate the same tokens.

Both servers get OMP_WAIT_POLICY=PASSIVE unless --omp-wait says otherwise: with libgomp's default
(spinning idle threads), a server whose OpenMP threads share the cores with other work slows down many
times over (measured on 2 cores beside one busy process: olmo serve 23-47 tok/s instead of 210-280).

Prints one table, then olmo serve's own scaling, tok/s at the highest concurrency over the lowest.

    python benchmarks/bench_serve.py [--preset tiny] [--threads 2] [--concurrency 1,4,16] [--repeats 3]
    python benchmarks/bench_serve.py --json          # the table to stderr, a JSON dump to stdout

The JSON dump's `measures` is benchmarks/measures.py's common list (tok/s at each concurrency).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measures import measure  # noqa: E402

URL_LINE = re.compile(r"http://127\.0\.0\.1:(\d+)/v1")
UVICORN_LINE = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")  # llama-cpp-python's server
MODEL_NAME = "bench"


# ---- the naive reference server (its own process) -----------------------------------------------------


def baseline_server(hf_dir: str, port: int, threads: int, dtype: str) -> None:
    """Serves POST /v1/completions (token-id or text prompt, greedy) with transformers' `generate`, one
    request at a time; `stream: true` sends each token as `data: {json}` as it is generated."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import torch
    import transformers
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    lock = threading.Lock()

    def piece(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    class Streamer(BaseStreamer):
        """Hands each new token to `send` (generate's first `put` is the prompt, skipped)."""

        def __init__(self, send: Any) -> None:
            self.send, self.prompt_seen, self.ids = send, False, []

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                self.ids.append(token)
                self.send(token)

        def end(self) -> None:
            pass

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._json(200, {"status": "ok"})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompt = body["prompt"]
            ids = prompt if isinstance(prompt, list) else tokenizer(prompt)["input_ids"]
            new = int(body.get("max_tokens", 16))
            stream = bool(body.get("stream"))

            def send(token: int) -> None:
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": piece(token)}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            if stream:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
            streamer = Streamer(send if stream else lambda token: None)
            prompt_ids = torch.tensor([ids])
            with lock, torch.inference_mode():
                model.generate(
                    prompt_ids,
                    attention_mask=torch.ones_like(prompt_ids),
                    do_sample=False,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=1,
                    streamer=streamer,
                )
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(streamer.ids)}
            if stream:
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                return
            pieces = [piece(t) for t in streamer.ids]
            text = tokenizer.backend_tokenizer.decode(streamer.ids)  # as olmo's: special tokens left out
            choice = {"index": 0, "text": text, "logprobs": {"tokens": pieces}}
            self._json(200, {"object": "text_completion", "choices": [choice], "usage": usage})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default listen backlog of 5 resets connections at concurrency 16

    server = Server(("127.0.0.1", port), Handler)

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"baseline serving {hf_dir} on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# ---- servers as subprocesses ----------------------------------------------------------------------------


class Server:
    """A server process started with `argv`; its first line of output holding http://127.0.0.1:PORT/v1
    gives the URL, the rest is kept (for errors) by a thread so that a full pipe never blocks it."""

    def __init__(
        self, label: str, argv: list[str], env: dict[str, str], ready: re.Pattern = URL_LINE
    ) -> None:
        self.label = label
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = ready.search(line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                break
        else:
            self.stop()
            raise SystemExit(f"{label} did not start:\n{''.join(self.lines[-30:])}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(threads: int, omp_wait: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NO_COLOR="1", TERM="dumb")
    if omp_wait == "inherit":
        return env
    env["OMP_WAIT_POLICY"] = omp_wait.upper()
    return env


def llama_cpp_server_available() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp.server") is not None
    except ImportError:  # llama_cpp itself is missing, or its library does not load
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def olmo_executable() -> str:
    script = Path(sys.executable).parent / "olmo"
    found = str(script) if script.is_file() else shutil.which("olmo")
    if not found:
        raise SystemExit("the `olmo` command is not installed: pip install -e '.[serve]' in this checkout")
    return found


# ---- the client ------------------------------------------------------------------------------------------


class Result(NamedTuple):
    ttft: float  # seconds from sending to the first text
    latency: float  # seconds from sending to the end of the stream
    tokens: int


def stream_one(client: Any, url: str, body: dict[str, Any]) -> Result:
    start = time.perf_counter()
    first, tokens, texts, length = None, None, 0, False
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.read()[:500]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"{url}: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                texts += 1
                if first is None:
                    first = time.perf_counter()
            if chunk.get("choices") and chunk["choices"][0].get("finish_reason") == "length":
                length = True
    end = time.perf_counter()
    if tokens is None:  # no usage in the stream (llama-cpp-python's): the budget if it ran out, else chunks
        tokens = body["max_tokens"] if length else texts
    return Result((first or end) - start, end - start, tokens)


class Level(NamedTuple):
    seconds: float
    results: list[Result]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)


def run_level(url: str, body: dict[str, Any], concurrency: int, requests: int) -> Level:
    """`concurrency` threads, each sending `requests` streaming requests back to back."""
    import httpx

    results: list[Result] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            for _ in range(requests):
                try:
                    results.append(stream_one(http, url, body))
                except BaseException as e:  # noqa: BLE001 - raised by the caller
                    errors.append(e)
                    return

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a request to {url} failed: {errors[0]!r}") from errors[0]
    return Level(seconds, results)


def greedy_answer(url: str, body: dict[str, Any], with_tokens: bool = True) -> tuple[list[str] | None, str]:
    import httpx

    extra = {"logprobs": 0} if with_tokens else {}
    got = httpx.post(f"{url}/v1/completions", json={**body, "stream": False, **extra}, timeout=600)
    got.raise_for_status()
    choice = got.json()["choices"][0]
    return (choice["logprobs"]["tokens"] if with_tokens else None), choice["text"]


def health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


# ---- the benchmark ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=2, help="requests per client thread")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16, help="olmo serve --max-batch")
    parser.add_argument(
        "--omp-wait",
        choices=["passive", "active", "inherit"],
        default="passive",
        help="OMP_WAIT_POLICY of both servers (inherit: this shell's, unset means libgomp's spinning)",
    )
    parser.add_argument(
        "--reference",
        choices=["auto", "naive", "llama-cpp"],
        default="auto",
        help="the anchor: llama-cpp-python's server where it is installed (auto), else the naive server",
    )
    parser.add_argument("--json", action="store_true", help="a JSON dump on stdout (the table on stderr)")
    parser.add_argument("--baseline-server", metavar="HF_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port, args.threads, args.dtype)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    olmo = olmo_executable()
    reference = args.reference
    if reference == "auto":
        reference = "llama-cpp" if llama_cpp_server_available() else "naive"
    elif reference == "llama-cpp" and not llama_cpp_server_available():
        raise SystemExit("llama-cpp-python's server is not installed: pip install 'llama-cpp-python[server]'")
    if importlib.util.find_spec("transformers") is None:
        raise SystemExit("transformers is not installed (the reference needs it): pip install transformers")
    out = sys.stderr if args.json else sys.stdout

    import torch
    from bench_generate import make_models

    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        *_, vocab = make_models(args.preset, "tiny", dtype, tmp)
        env = server_env(args.threads, args.omp_wait)
        ours = Server(
            "olmo serve",
            [olmo, "serve", str(tmp / "step0-unsharded"), "--port", "0", "--device", "cpu", "--dtype",
             args.dtype, "--max-batch", str(args.max_batch), "--name", MODEL_NAME],
            env,
        )  # fmt: skip
        servers.append(ours)
        rng = random.Random(0)
        prompt: Any = [rng.randrange(2, vocab) for _ in range(args.prompt_len)]
        if reference == "llama-cpp":
            theirs = _llama_cpp_server(olmo, tmp, args, env)
            from transformers import AutoTokenizer

            prompt = AutoTokenizer.from_pretrained(tmp / "hf").decode(prompt)  # its server takes text only
            no_eos = {"logit_bias": {"0": -100.0}}  # the tiny preset's EOS id is 0
        else:
            theirs = Server(
                "the baseline server",
                [sys.executable, __file__, "--baseline-server", str(tmp / "hf"), "--port", "0", "--threads",
                 str(args.threads), "--dtype", args.dtype],
                env,
            )  # fmt: skip
            no_eos = {}
        servers.append(theirs)
        common = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
        bodies = {
            "ours": {**common, "model": MODEL_NAME, "ignore_eos": True, "stream": True,
                     "stream_options": {"include_usage": True}},
            "theirs": {**common, **no_eos, "stream": True},
        }  # fmt: skip
        urls = {"ours": ours.url, "theirs": theirs.url}
        with_tokens = reference == "naive"
        answers = {
            side: greedy_answer(urls[side], bodies[side], with_tokens) for side in urls
        }  # a warm-up too
        same_tokens = answers["ours"][0] == answers["theirs"][0] if with_tokens else None
        # Bytes that are not whole UTF-8 characters: U+FFFD in olmo's text, left out by llama.cpp's.
        same_text = answers["ours"][1].replace("\ufffd", "") == answers["theirs"][1].replace("\ufffd", "")
        print(
            f"preset {args.preset}, {args.dtype}, {args.threads} threads per server, "
            f"prompt {args.prompt_len} tokens, {args.max_tokens} new tokens, greedy, "
            f"{args.requests} requests per client, OMP_WAIT_POLICY {args.omp_wait}, median of "
            f"{args.repeats} interleaved runs; reference: {REFERENCES[reference]}",
            file=out,
        )
        if with_tokens:
            counts = f"({len(answers['ours'][0] or [])} vs {len(answers['theirs'][0] or [])}), "
            print(f"same greedy tokens: {same_tokens} {counts}same text: {same_text}", file=out)
        else:
            print(f"same greedy text: {same_text} (U+FFFD for a partial character left out)", file=out)
        if not same_text:
            print(f"  olmo serve: {answers['ours'][1]!r}\n  reference:  {answers['theirs'][1]!r}", file=out)
        for side in urls:  # warm-up at the highest concurrency (first batched shapes), not timed
            run_level(urls[side], bodies[side], max(levels), 1)
        runs: dict[tuple[str, int], list[Level]] = {(s, c): [] for s in urls for c in levels}
        steps: dict[int, list[tuple[int, int]]] = {c: [] for c in levels}
        for rep in range(args.repeats):
            for c in levels:
                order = ["ours", "theirs"] if (rep + c) % 2 == 0 else ["theirs", "ours"]
                for side in order:
                    before = health(ours.url) if side == "ours" else None
                    level = run_level(urls[side], bodies[side], c, args.requests)
                    runs[side, c].append(level)
                    if before is not None:
                        after = health(ours.url)
                        done = after["decode_steps"] - before["decode_steps"]
                        steps[c].append((done, after["largest_batch"]))
        report = summarize(args, levels, runs, steps, same_tokens, same_text, reference)
        print_table(report, out)
        for row in report["levels"]:
            for side in ("ours", "theirs"):
                want = row["requests"] * args.max_tokens
                short = [n for n in row[side]["tokens_per_run"] if n != want]
                if short:
                    print(f"note: {side} generated {short} tokens in a run at concurrency "
                          f"{row['concurrency']}, not {want}", file=out)  # fmt: skip
        scaling = report["scaling"]
        print(
            f"olmo serve scaling: tok/s at concurrency {max(levels)} / concurrency {min(levels)} = "
            f"{scaling:.2f}x",
            file=out,
        )
        if args.json:
            print(json.dumps(report, indent=2))
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


REFERENCES = {
    "naive": "naive transformers generate per request",
    "llama-cpp": "llama-cpp-python's server on our GGUF export",
}
SHORT = {"naive": "naive", "llama-cpp": "llama"}


def _llama_cpp_server(olmo: str, tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> Server:
    """llama-cpp-python's server on the model exported by `olmo quantize --gguf` (f32, f16 for bf16), not
    interrupting a request when the next arrives (its default would cut streams short)."""
    gguf = tmp / "model.gguf"
    kind = "f32" if args.dtype == "fp32" else "f16"
    made = subprocess.run(
        [olmo, "quantize", str(tmp / "step0-unsharded"), "--gguf", kind, "--output", str(gguf)],
        capture_output=True,
        text=True,
        env=env,
    )
    if made.returncode != 0:
        raise SystemExit(f"the GGUF export failed:\n{made.stderr}")
    context = 4 * (args.prompt_len + args.max_tokens)  # room for its tokenization of the text prompt
    return Server(
        "llama-cpp-python's server",
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
         str(free_port()), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
         "--n_ctx", str(context), "--interrupt_requests", "False"],
        env,
        ready=UVICORN_LINE,
    )  # fmt: skip


def summarize(
    args: argparse.Namespace,
    levels: list[int],
    runs: dict[tuple[str, int], list[Level]],
    steps: dict[int, list[tuple[int, int]]],
    same_tokens: bool | None,
    same_text: bool,
    reference: str,
) -> dict[str, Any]:
    rows = []
    for c in levels:
        row: dict[str, Any] = {"concurrency": c, "requests": c * args.requests}
        for side in ("ours", "theirs"):
            rates = [lv.tokens / lv.seconds for lv in runs[side, c]]
            results = [r for lv in runs[side, c] for r in lv.results]
            row[side] = {
                "tok_s": statistics.median(rates),
                "tok_s_min": min(rates),
                "tok_s_max": max(rates),
                "tokens_per_run": [lv.tokens for lv in runs[side, c]],
                **{
                    f"{name}_p{q}_ms": 1000 * percentile([getattr(r, name) for r in results], q)
                    for name in ("ttft", "latency")
                    for q in (50, 95)
                },
            }
        row["ratio"] = row["ours"]["tok_s"] / row["theirs"]["tok_s"]
        decode = [s for s, _ in steps[c]]
        row["ours"]["decode_steps_per_run"] = decode
        row["ours"]["largest_batch_so_far"] = max(b for _, b in steps[c])
        rows.append(row)
    by = {row["concurrency"]: row for row in rows}
    measures = [
        measure(f"serve {c} clients ({args.preset}, {args.dtype})", "tokens/s",
                [lv.tokens / lv.seconds for lv in runs["ours", c]],
                [lv.tokens / lv.seconds for lv in runs["theirs", c]], REFERENCES[reference])
        for c in levels
    ]  # fmt: skip
    return {
        "benchmark": "serve",
        "measures": measures,
        "settings": {k: v for k, v in vars(args).items() if k not in ("baseline_server", "port", "json")},
        "reference": REFERENCES[reference],
        "reference_short": SHORT[reference],
        "same_tokens": same_tokens,
        "same_text": same_text,
        "levels": rows,
        "scaling": by[max(levels)]["ours"]["tok_s"] / by[min(levels)]["ours"]["tok_s"],
    }


def print_table(report: dict[str, Any], out: Any) -> None:
    ref = report["reference_short"]
    head = (
        f"{'conc':>4} {'olmo tok/s':>10} {'(min-max)':>13} {ref + ' tok/s':>11} {'(min-max)':>13}"
        f" {'ratio':>6}"
        f" {'TTFT p50/p95 ms olmo':>21} {ref:>13} {'latency p50/p95 ms olmo':>24} {ref:>13}"
        f" {'steps/run':>9}"
    )
    print(head, file=out)
    for row in report["levels"]:
        a, b = row["ours"], row["theirs"]
        steps = statistics.median(a["decode_steps_per_run"])
        print(
            f"{row['concurrency']:>4} {a['tok_s']:>10,.0f} {spread(a):>13} {b['tok_s']:>11,.0f}"
            f" {spread(b):>13} {row['ratio']:>5.2f}x {pair(a, 'ttft'):>21} {pair(b, 'ttft'):>13}"
            f" {pair(a, 'latency'):>24} {pair(b, 'latency'):>13} {steps:>9.0f}",
            file=out,
        )


def spread(side: dict[str, Any]) -> str:
    return f"({side['tok_s_min']:,.0f}-{side['tok_s_max']:,.0f})"


def pair(side: dict[str, Any], name: str) -> str:
    return f"{side[f'{name}_p50_ms']:.0f}/{side[f'{name}_p95_ms']:.0f}"


if __name__ == "__main__":
    main()
