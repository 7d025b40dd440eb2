"""Turning one chunk of records into token ids: the work that runs in the worker processes.

Rules (also stated in `olmo data tokenize --help`):
- invalid UTF-8 is decoded with U+FFFD replacement characters (and lone surrogates from JSON escapes
  likewise replaced); the document is kept and counted as `invalid_utf8`;
- an empty document (no text, or only whitespace; or a blank line) is skipped and counted;
- a document's leading and trailing whitespace (Python's `str.strip`) is not tokenized, as `dolma tokens`
  (which made upstream's training data) does; `strip=False` keeps it. Conversations are not stripped;
- a line that is not a JSON object, or lacks the text field (or, with chat, a valid `messages` list),
  is nested too deeply to parse, or is longer than the record limit (`inputs.MAX_RECORD_BYTES`), is
  bad: the run stops naming `file:line`, or with `skip_bad` it is skipped and counted;
- each document is the tokenizer's encoding of its text with no special tokens added, then EOS unless
  its last id already is EOS (upstream's rule), with BOS first if asked for.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from olmo_cli.data.chat import ChatFormatError, parse_messages, render_conversation
from olmo_cli.data.inputs import Chunk, too_long_message

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class EncodeSettings:
    """What a worker needs; plain data, so it pickles to spawned processes."""

    tokenizer_json: str
    eos_token_id: int
    bos_token_id: int | None
    dtype: str
    kind: dict[int, str]  # input index -> "jsonl" | "txt"
    names: dict[int, str]  # input index -> input name, for document ids and error messages
    text_field: str = "text"
    txt_per_line: bool = False
    strip: bool = True
    add_eos: bool = True
    add_bos: bool = False
    chat: bool = False
    chat_format: str = "tulu"  # see olmo_cli.data.chat
    skip_bad: bool = False


@dataclass
class ChunkResult:
    input_index: int
    first_line: int
    end_offset: int
    ids: np.ndarray  # every kept document's tokens, concatenated, in the output dtype
    lengths: np.ndarray  # int64 token count per kept document
    lines: np.ndarray  # int64 line number per kept document
    doc_ids: list[str]
    mask: np.ndarray | None  # bool per token (chat only)
    empty_lines: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong)
    invalid_utf8_lines: list[int] = field(default_factory=list)
    error: str | None = None  # `file:line: what` of the first bad record when bad records are fatal


class Encoder:
    def __init__(self, settings: EncodeSettings) -> None:
        from tokenizers import Tokenizer

        self.s = settings
        self.tokenizer = Tokenizer.from_str(settings.tokenizer_json)
        self.eos_text = self.tokenizer.decode([settings.eos_token_id], skip_special_tokens=False)
        # Newer tokenizers skip computing offsets we do not need; same ids.
        self._batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)

    def encode_chunk(self, chunk: Chunk) -> ChunkResult:
        s = self.s
        name = s.names[chunk.input_index]
        result = ChunkResult(chunk.input_index, chunk.first_line, chunk.end_offset, *_empty_arrays(s))
        texts: list[Any] = []  # str, or a parsed conversation with --chat
        lines: list[int] = []
        doc_ids: list[str] = []
        for number, record in enumerate(chunk.records, start=chunk.first_line):
            text, fixed = _decode(record, first=number == 1)
            if fixed:
                result.invalid_utf8_lines.append(number)
            try:
                if number in chunk.too_long:
                    raise ValueError(too_long_message(chunk.too_long[number]))
                content, doc_id = self._parse(text, s.kind[chunk.input_index])
                content, surrogates = _clean(content)
            except ValueError as exc:
                result.bad.append((number, str(exc)))
                if not s.skip_bad:
                    result.error = f"{name}:{number}: {exc}"
                    break
                continue
            if surrogates and not fixed:
                result.invalid_utf8_lines.append(number)
            if content is None:
                result.empty_lines.append(number)
                continue
            texts.append(content)
            lines.append(number)
            doc_ids.append(doc_id if doc_id is not None else f"{name}:{number}")
        if s.chat:
            self._encode_chat(texts, lines, doc_ids, result)
        else:
            self._encode_texts(texts, lines, doc_ids, result)
        return result

    def _parse(self, text: str, kind: str) -> tuple[Any, str | None]:
        """(text or conversation, document id); (None, _) for an empty document; ValueError when bad."""
        if kind == "txt":
            if self.s.chat:
                raise ValueError("--chat reads JSON Lines with a `messages` list, not text files")
            if self.s.txt_per_line:
                text = text.removesuffix("\n").removesuffix("\r")  # the line break ends, not belongs to, it
            return self._document(text), None
        if not text.strip():  # a blank line (often the last) holds no document, rather than bad JSON
            return None, None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from None
        except RecursionError:  # e.g. 100,000 `[`: the parser recurses once per level
            raise ValueError("invalid JSON: nested too deeply to parse") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        doc_id = obj.get("id")
        doc_id = None if doc_id is None else str(doc_id)
        if self.s.chat:
            messages = parse_messages(obj)
            return (messages if any(m[0] == "assistant" for m in messages) else None), doc_id
        if self.s.text_field not in obj:
            raise ValueError(f"no {self.s.text_field!r} field (fields: {', '.join(map(str, obj)) or 'none'})")
        value = obj[self.s.text_field]
        if not isinstance(value, str):
            raise ValueError(f"field {self.s.text_field!r} is {type(value).__name__}, not a string")
        return self._document(value), doc_id

    def _document(self, text: str) -> str | None:
        """The text to tokenize, or None for an empty document."""
        stripped = text.strip()
        if not stripped:
            return None
        return stripped if self.s.strip else text

    def _encode_texts(
        self, texts: list[str], lines: list[int], doc_ids: list[str], result: ChunkResult
    ) -> None:
        s = self.s
        docs = [e.ids for e in self._batch(texts, add_special_tokens=False)]
        for ids in docs:
            if s.add_eos and (not ids or ids[-1] != s.eos_token_id):
                ids.append(s.eos_token_id)
            if s.add_bos and s.bos_token_id is not None:
                ids.insert(0, s.bos_token_id)
        self._fill(result, docs, lines, doc_ids, masks=None)

    def _encode_chat(
        self, convs: list[Any], lines: list[int], doc_ids: list[str], result: ChunkResult
    ) -> None:
        docs, masks, kept_lines, kept_ids = [], [], [], []
        for conv, line, doc_id in zip(convs, lines, doc_ids, strict=True):
            try:
                ids, mask = render_conversation(
                    conv, self.tokenizer, self.s.eos_token_id, self.eos_text, self.s.chat_format
                )
            except ChatFormatError as exc:  # pragma: no cover - parse_messages already checked the shape
                result.bad.append((line, str(exc)))
                continue
            if not any(mask):  # upstream drops examples with nothing to learn from
                result.empty_lines.append(line)
                continue
            docs.append(ids)
            masks.append(mask)
            kept_lines.append(line)
            kept_ids.append(doc_id)
        self._fill(result, docs, kept_lines, kept_ids, masks=masks)

    def _fill(
        self,
        result: ChunkResult,
        docs: list[list[int]],
        lines: list[int],
        doc_ids: list[str],
        masks: list[list[bool]] | None,
    ) -> None:
        result.lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = [token for doc in docs for token in doc]
        result.ids = np.array(flat, dtype=self.s.dtype)
        result.lines = np.array(lines, dtype=np.int64)
        result.doc_ids = doc_ids
        if masks is not None:
            result.mask = np.array([m for mask in masks for m in mask], dtype=np.bool_)


def _empty_arrays(
    s: EncodeSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    empty_mask = np.zeros(0, dtype=np.bool_) if s.chat else None
    return np.zeros(0, s.dtype), np.zeros(0, np.int64), np.zeros(0, np.int64), [], empty_mask


def _decode(record: bytes, *, first: bool) -> tuple[str, bool]:
    """Record bytes -> text, and whether invalid UTF-8 had to be replaced."""
    try:
        text, fixed = record.decode("utf-8"), False
    except UnicodeDecodeError:
        text, fixed = record.decode("utf-8", errors="replace"), True
    if first:
        text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the first document
    return text, fixed


def _clean(content: Any) -> tuple[Any, bool]:
    """JSON may escape lone surrogates (\\ud800) that no UTF-8 tokenizer accepts: replace them as invalid
    UTF-8 is replaced. Returns the content (text or conversation) and whether anything was replaced."""
    if content is None:
        return None, False
    if isinstance(content, str):
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", content), True
        return content, False
    cleaned = [(role, _clean(text)) for role, text in content]
    return [(role, text) for role, (text, _) in cleaned], any(fixed for _, (_, fixed) in cleaned)


# ---- the worker process side: one Encoder per process, built once by the pool's initializer ----------

_ENCODER: Encoder | None = None


def init_worker(settings: EncodeSettings) -> None:
    global _ENCODER
    # One process per core already: the tokenizer's own thread pool would only oversubscribe the CPUs.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = Encoder(settings)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A parent killed with SIGKILL cannot stop its pool; without this its workers would wait forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def encode_in_worker(chunk: Chunk) -> ChunkResult:
    assert _ENCODER is not None, "init_worker did not run in this process"
    return _ENCODER.encode_chunk(chunk)
