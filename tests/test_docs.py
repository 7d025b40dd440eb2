"""The repository explains itself: code cites the repository's own documents, never one kept elsewhere;
every `docs/format.md §N` and `docs/architecture.md rule N` it cites exists; and the layer table of
docs/architecture.md is the one the import test enforces."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORMAT_DOC = ROOT / "docs" / "format.md"
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"
SCANNED = ("olmo_cli", "tests", "scripts", "benchmarks")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".sh"}

# Documents outside the repository, as code used to cite them. Spelled in pieces so that this file does
# not match itself.
OUTSIDE = {
    "the upstream facts sheet": re.compile("olmo-" + r"format\.md", re.IGNORECASE),
    "the design notes": re.compile("ARCHITECTURE" + r"(\.md|\s+rules?\b)"),
    "a numbered 'reference' section": re.compile("reference" + r"\s+(section\s+)?\d+(\.\d+)*\b", re.I),
    "a bare '(section N)'": re.compile(r"\(" + "section" + r"\s+\d"),
}
# Any § in code is a section of docs/format.md, the only document with numbered sections.
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
RULES = re.compile(r"docs/architecture\.md,?[\s#]+rules?[\s#]+(\d+(?:[\s#]*(?:,|and|&)[\s#]*\d+)*)")
BARE_RULE = re.compile(r"\brules?\s+\d")


def _files(suffixes: set[str]) -> list[Path]:
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts:
                found.append(path)
    return [*found, ROOT / "README.md"]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def format_sections() -> set[str]:
    """Section numbers of docs/format.md: its numbered headings (`## 4.`, `### 4.7 ...`)."""
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", _read(FORMAT_DOC), flags=re.M))


def architecture_rules() -> set[str]:
    return set(re.findall(r"^### Rule (\d+)\. ", _read(ARCHITECTURE_DOC), flags=re.M))


def test_the_documents_have_what_code_cites():
    sections, rules = format_sections(), architecture_rules()
    assert {"1.1", "4.7", "5.3", "7.2"} <= sections
    assert {"1", "5", "13", "17"} <= rules
    # Rule numbers are cited, so they run 1..N without gaps or repeats.
    numbers = re.findall(r"^### Rule (\d+)\. ", _read(ARCHITECTURE_DOC), flags=re.M)
    assert [int(n) for n in numbers] == list(range(1, len(numbers) + 1))


def test_format_sections_have_stable_anchors():
    # Every numbered heading is preceded by an explicit anchor named after its number, so links survive
    # a change of title.
    lines = _read(FORMAT_DOC).splitlines()
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", line)
        if match and (i == 0 or lines[i - 1].strip() != f'<a id="s{match[1]}"></a>'):
            missing.append(match[1])
    assert not missing, f'docs/format.md sections without an <a id="sN"></a> line above them: {missing}'


@pytest.mark.parametrize("path", _files(TEXT_SUFFIXES), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_cites_a_document_outside_the_repository(path):
    text = _read(path)
    found = [
        f"{_where(path, text, m.start())}: {what} ({m[0]!r})"
        for what, pattern in OUTSIDE.items()
        for m in pattern.finditer(text)
    ]
    assert not found, (
        "cite the repository's own documents instead (docs/format.md §N for formats, data order and "
        f"math; docs/architecture.md rule N for the house rules): {found}"
    )


@pytest.mark.parametrize("path", _files({".py"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_section_and_rule_exists(path):
    text = _read(path)
    sections, rules = format_sections(), architecture_rules()
    bad = [
        f"{_where(path, text, m.start())}: docs/format.md has no §{m[1]}"
        for m in SECTION.finditer(text)
        if m[1] not in sections
    ]
    for m in RULES.finditer(text):
        bad += [
            f"{_where(path, text, m.start())}: docs/architecture.md has no rule {n}"
            for n in re.findall(r"\d+", m[1])
            if n not in rules
        ]
    unqualified = BARE_RULE.finditer(RULES.sub(lambda m: " " * len(m[0]), text))
    bad += [
        f"{_where(path, text, m.start())}: say which rule ('docs/architecture.md rule N')"
        for m in unqualified
    ]
    assert not bad, bad


def _rule_numbers(text: str) -> list[str]:
    return [n for m in RULES.finditer(text) for n in re.findall(r"\d+", m[1])]


def test_the_citation_patterns_see_citations():
    assert SECTION.findall("(docs/format.md §4.3, §4.7).") == ["4.3", "4.7"]
    assert _rule_numbers("docs/architecture.md rules 1, 2 and 15") == ["1", "2", "15"]
    rule = "rule"  # samples assembled so that this file's own text holds none of them
    assert _rule_numbers(f"(docs/architecture.md\n    # {rule} 13)") == ["13"]
    assert not BARE_RULE.search(RULES.sub("", "see docs/architecture.md rule 5."))
    assert BARE_RULE.search(f"the data goes into its config ({rule} 3)")
    samples = ("olmo-" + "format.md §4.7", f"ARCHITECTURE {rule} 13", "reference" + " section 5.3",
               "(" + "section 1.1)")  # fmt: skip
    assert all(p.search(s) for p, s in zip(OUTSIDE.values(), samples, strict=True))
    assert not any(
        p.search("see docs/architecture.md rule 5 and the reference logits") for p in OUTSIDE.values()
    )


# ---- the layer table of docs/architecture.md is the import test's ALLOWED ---------------------------


def _import_test_tables() -> tuple[set[str], dict[str, set[str]]]:
    """BASE and ALLOWED from tests/cli/test_imports.py, evaluated from its plain top-level assignments
    (the file is not imported: it belongs to another package of tests)."""
    tree = ast.parse((ROOT / "tests" / "cli" / "test_imports.py").read_text())
    namespace: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            try:
                exec(compile(ast.Module([node], []), "test_imports.py", "exec"), namespace)  # noqa: S102
            except NameError:
                continue  # an assignment built from functions or paths: not part of the tables
    return set(namespace["BASE"]), {k: set(v) for k, v in namespace["ALLOWED"].items()}


def _documented_layers(base: set[str]) -> dict[str, set[str]]:
    """{unit: what it may import} from the first table of section 2 of docs/architecture.md."""
    section = _read(ARCHITECTURE_DOC).split('<a id="layers"></a>', 1)[1]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, flags=re.M)
    table: dict[str, set[str]] = {}
    for unit_cell, allowed_cell in rows:
        if unit_cell.strip() == "unit" or set(unit_cell) <= {"-", "|", " "}:
            continue
        if "CLI layer" in unit_cell:
            break
        allowed = set(re.findall(r"`([\w.]+)`", allowed_cell))
        if "base" in allowed_cell:
            allowed |= base
        units = re.findall(r"`([\w.]+)`", re.sub(r"\(.*?\)", "", unit_cell))
        for unit in units:
            table[unit] = allowed | ({unit} if unit in base else set())
    return table


def test_the_documented_layers_are_the_enforced_ones():
    base, allowed = _import_test_tables()
    documented = _documented_layers(base)
    assert documented == allowed, (
        "the layer table in section 2 of docs/architecture.md and ALLOWED in tests/cli/test_imports.py "
        f"disagree: documented {documented}, enforced {allowed}"
    )
