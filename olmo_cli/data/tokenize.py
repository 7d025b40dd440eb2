"""`olmo data tokenize`, the engine: documents in, token files out (layout in `olmo_cli.data.parts`).

The pipeline: expand the inputs -> read them in order as chunks of records -> encode chunks in worker
processes -> write the results strictly in input order. Work is handed out in a fixed order and the
results are consumed in that order, so the output is byte-identical whatever the number of processes.

A full disk (or quota) while writing is a DataError naming the output and the space needed, estimated
from how many tokens the inputs read so far gave; the unfinished part's temporary files are removed and
the finished ones kept, so the same command, run again once there is space, completes the job with the
bytes an uninterrupted run writes.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from olmo_cli.data import parts
from olmo_cli.data.encode import ChunkResult, Encoder, EncodeSettings, encode_in_worker, init_worker
from olmo_cli.data.inputs import Chunk, InputFile, describe, expand_inputs, iter_chunks
from olmo_cli.data.tokenizer import ResolvedTokenizer, TokenizerIdentity, resolve_tokenizer
from olmo_cli.errors import DataError, UsageError

DEFAULT_MAX_TOKENS_PER_FILE = 512 * 1024 * 1024  # as upstream's prepare_memmap_dataset: 1 GiB of uint16
MAX_BAD_EXAMPLES = 5


@dataclass(frozen=True)
class TokenizeOptions:
    text_field: str = "text"
    txt_per_line: bool = False
    strip: bool = True  # a document's surrounding whitespace is not tokenized, as `dolma tokens` does
    eos: bool = True
    bos: bool = False
    max_tokens_per_file: int = DEFAULT_MAX_TOKENS_PER_FILE
    skip_bad: bool = False
    chat: bool = False
    chat_format: str = "auto"  # auto: olmo2 for OLMo 2's dolma2 tokenizer, else tulu
    dtype: str = "auto"
    eos_token_id: int | None = None
    processes: int | None = None  # None: every core; changes the speed, never the output

    def recorded(self) -> dict[str, Any]:
        """The options the manifest records: everything that shapes the output (so not `processes`)."""
        recorded = asdict(self)
        del recorded["processes"]
        return recorded


@dataclass(frozen=True)
class TokenizeProgress:
    documents: int
    tokens: int
    bytes_done: int  # of the inputs as stored (compressed size for .gz/.zst)
    bytes_total: int
    files_done: int


@dataclass
class TokenizeSummary:
    output: Path
    manifest: dict[str, Any]
    processes: int
    seconds: float = 0.0
    already_complete: bool = False
    resumed_files: int = 0  # parts an earlier, interrupted run had finished
    bad_examples: list[str] = field(default_factory=list)  # `file:line: what` of the first bad records

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "output": str(self.output),
            "files": len(m["files"]),
            "documents": m["documents"],
            "tokens": m["tokens"],
            "dtype": m["dtype"],
            "skipped": m["skipped"],
            "invalid_utf8": m["invalid_utf8"],
            "tokenizer": m["tokenizer"]["identifier"],
            "input_bytes": sum(i["bytes"] for i in m["inputs"]),
            "seconds": round(self.seconds, 3),
            "processes": self.processes,
            "already_complete": self.already_complete,
            "resumed_files": self.resumed_files,
            "bad_examples": self.bad_examples,
        }


def default_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_dtype(requested: str, vocab_size: int) -> str:
    if requested not in ("auto", "uint16", "uint32"):
        raise UsageError(f"--dtype must be auto, uint16 or uint32, not {requested!r}")
    if requested == "uint16" and vocab_size > 1 << 16:
        raise UsageError(
            f"a vocabulary of {vocab_size} ids does not fit uint16", hint="use --dtype uint32 or auto"
        )
    if requested == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    return requested


def tokenize(
    inputs: list[str],
    tokenizer: str,
    output: Path | str,
    options: TokenizeOptions | None = None,
    *,
    on_progress: Callable[[TokenizeProgress], None] | None = None,
) -> TokenizeSummary:
    """Tokenize `inputs` into `output`; resumes an interrupted run of the same job, and does nothing
    (returning its summary) when that job is already complete there."""
    options = options or TokenizeOptions()
    started = time.perf_counter()
    processes = options.processes or default_processes()
    resolved, files, job = _plan(inputs, tokenizer, options)
    root = Path(output)
    sizes = [int(d["bytes"]) for d in job["inputs"]]
    spent = _Spent(sum(sizes))
    bad_examples: list[str] = []
    with _disk_full_is_data_error(root, spent):
        state = parts.prepare(root, job)
        if isinstance(state, dict):
            elapsed = time.perf_counter() - started
            return TokenizeSummary(root, state, processes, elapsed, already_complete=True)
        settings = _settings(resolved.json_text, resolved.identity, job["dtype"], files, options)
        writer = parts.PartWriter(root, job["dtype"], options.max_tokens_per_file, options.chat, state)
        spent.writer = writer
        try:
            chunks = iter_chunks(files, txt_per_line=options.txt_per_line, start=state.start)
            for result in _encoded(chunks, settings, processes):
                if result.error:
                    raise DataError(result.error, hint=_bad_hint(options))
                bad_examples += [f"{files[result.input_index].name}:{ln}: {what}" for ln, what in result.bad]
                spent.done = sum(sizes[: result.input_index]) + result.end_offset
                spent.tokens = writer.counts.tokens + int(result.lengths.sum())
                writer.add(result)
                if on_progress:
                    c, n_files = writer.counts, len(writer.records)
                    total = spent.input_bytes
                    on_progress(TokenizeProgress(c.documents, c.tokens, spent.done, total, n_files))
            manifest = writer.finish(job)
        finally:
            writer.close()
    return TokenizeSummary(
        root,
        manifest,
        processes,
        time.perf_counter() - started,
        resumed_files=len(state.records),
        bad_examples=bad_examples[:MAX_BAD_EXAMPLES],
    )


@dataclass
class _Spent:
    """How far a run got: what a full disk's message estimates the space needed from."""

    input_bytes: int
    done: int = 0  # input bytes read (as stored) up to the end of the chunk being written
    tokens: int = 0  # tokens those inputs give
    writer: parts.PartWriter | None = None


@contextmanager
def _disk_full_is_data_error(root: Path, spent: _Spent) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if spent.writer is not None:
            spent.writer.close()  # the unfinished part's files go before the free space is measured
        raise _disk_full(root, spent, exc) from None


def _disk_full(root: Path, spent: _Spent, exc: OSError) -> DataError:
    writer = spent.writer
    on_disk = writer.bytes_on_disk() if writer is not None else 0
    try:
        free = f"{_size(shutil.disk_usage(root).free)} is free there now"
    except OSError:
        free = "the free space could not be read"
    reason = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on the device"
    if writer is not None and spent.done and spent.tokens:
        finished_tokens = sum(int(r["tokens"]) for r in writer.records)
        per_token = on_disk / finished_tokens if finished_tokens else writer.dtype.itemsize + writer.chat
        tokens = spent.tokens * spent.input_bytes / spent.done
        need = f"about {_size(tokens * per_token)} in all (estimated from the inputs read so far)"
    else:
        need = f"roughly the inputs' size, {_size(spent.input_bytes)}, or less (no input was read yet)"
    return DataError(
        f"{reason} writing token files to {root}: they need {need}; {_size(on_disk)} of finished "
        f"files are kept there, and {free}",
        hint="free some space (or use a disk with more) and run the same command again: it continues "
        "where it stopped, with the finished files kept",
    )


def _size(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _plan(
    inputs: list[str], tokenizer: str, options: TokenizeOptions
) -> tuple[ResolvedTokenizer, list[InputFile], dict[str, Any]]:
    """Check the options, resolve the tokenizer and the inputs: the job, as the manifest will record it."""
    if options.max_tokens_per_file < 1:
        raise UsageError("--max-tokens-per-file must be at least 1")
    resolved = resolve_tokenizer(tokenizer, eos_token_id=options.eos_token_id)
    identity = resolved.identity
    if options.bos and options.chat:
        raise UsageError("--bos does not apply to --chat: the chat format starts every conversation with EOS")
    if options.bos and identity.bos_token_id is None:
        raise UsageError(f"{tokenizer} has no BOS token to put first", hint="leave out --bos")
    files = expand_inputs(inputs)
    job = {
        "format": parts.FORMAT,
        "tokenizer": identity.as_dict(),
        "dtype": choose_dtype(options.dtype, identity.vocab_size),
        "inputs": [describe(f) for f in files],
        "options": options.recorded(),
    }
    return resolved, files, job


def resolve_chat_format(requested: str, identity: TokenizerIdentity) -> str:
    """`auto` -> the format of the models this tokenizer belongs to (olmo_cli.data.chat)."""
    from olmo_cli.data.chat import CHAT_FORMATS, chat_format_for

    if requested == "auto":
        return chat_format_for(identity.identifier, identity.vocab_size, identity.eos_token_id)
    if requested not in CHAT_FORMATS:
        raise UsageError(f"--chat-format must be auto, {' or '.join(CHAT_FORMATS)}, not {requested!r}")
    return requested


def _bad_hint(options: TokenizeOptions) -> str:
    what = "a `messages` list" if options.chat else f"a string field {options.text_field!r}"
    return f"each line must be a JSON object with {what}; fix the line, or pass --skip-bad to skip such lines"


def _settings(
    tokenizer_json: str,
    identity: TokenizerIdentity,
    dtype: str,
    files: list[InputFile],
    options: TokenizeOptions,
) -> EncodeSettings:
    return EncodeSettings(
        tokenizer_json=tokenizer_json,
        eos_token_id=identity.eos_token_id,
        bos_token_id=identity.bos_token_id,
        dtype=dtype,
        kind={i: f.kind for i, f in enumerate(files)},
        names={i: f.name for i, f in enumerate(files)},
        text_field=options.text_field,
        txt_per_line=options.txt_per_line,
        strip=options.strip,
        add_eos=options.eos,
        add_bos=options.bos,
        chat=options.chat,
        chat_format=resolve_chat_format(options.chat_format, identity),
        skip_bad=options.skip_bad,
    )


def _encoded(chunks: Iterable[Chunk], settings: EncodeSettings, processes: int) -> Iterator[ChunkResult]:
    """Encoded chunks, in the order of `chunks`. With several processes at most two chunks per worker
    are in flight, so memory stays bounded however large the inputs."""
    if processes == 1:
        with _tokenizer_threads_off():
            encoder = Encoder(settings)
            for chunk in chunks:
                yield encoder.encode_chunk(chunk)
        return
    # spawn, not fork: the parent may run threads (the progress display) that a fork would copy mid-step.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=init_worker, initargs=(settings,))
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(encode_in_worker, chunk))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _tokenizer_threads_off() -> Iterator[None]:
    """`--processes 1` means one core: keep the tokenizers library from starting its own threads."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
