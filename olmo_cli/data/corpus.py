"""The default corpus: text that ships with every Python installation, so the tiny model trains offline.

Documents, in this fixed order (about 10 MB for CPython 3.11, ~3M tokens of the tiny tokenizer):
1. the language reference topics of `pydoc_data/topics.py` (what `help("if")` shows), one per topic;
2. the docstrings of every standard-library module, one document per module, pydoc-like: a heading
   line for each class and function followed by its docstring;
3. the source code of every standard-library module, one document per module.
Files are read as text and parsed with `ast`; none of them is imported. Parts that some distributions
ship separately or not at all (tests, tkinter, idlelib, distutils, lib2to3, ...) and the machine-specific
`_sysconfigdata` are left out, so one Python version gives the same corpus everywhere. Codec tables
(`encodings/`) contribute docstrings but not source: they are mostly hex numbers.
"""

from __future__ import annotations

import ast
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LEFT_OUT = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "tkinter", "idlelib",
    "turtledemo", "distutils", "lib2to3", "ensurepip", "pydoc_data",
}  # fmt: skip
_LEFT_OUT_FILES = {"turtle.py", "antigravity.py", "this.py"}
_NO_SOURCE = {"encodings"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_version() -> str:
    """The corpus depends on the Python that supplies it: this names it (recorded by whoever caches it)."""
    return f"python-stdlib/{platform.python_implementation()}-{platform.python_version()}"


def stdlib_modules(root: Path | None = None) -> list[tuple[str, Path]]:
    """(dotted module name, file) for the standard-library sources the corpus uses, sorted by name."""
    root = root or stdlib_root()
    modules = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _LEFT_OUT & set(rel.parts[:-1]) or rel.name in _LEFT_OUT_FILES:
            continue
        if rel.name.startswith("_sysconfigdata") or rel.parts[0].startswith("config-"):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules.append((name, path))
    return sorted(modules)


def default_corpus_documents(root: Path | None = None) -> Iterator[Document]:
    """Every document of the default corpus, in its fixed order (see the module docstring)."""
    root = root or stdlib_root()
    modules = stdlib_modules(root)
    parsed: list[tuple[str, str, ast.Module]] = []
    for name, path in modules:
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            parsed.append((name, source, ast.parse(source)))
        except SyntaxError:  # e.g. lib2to3-style fixtures with Python 2 syntax: not text we can use
            continue
    yield from _topic_documents(root)
    for name, _, tree in parsed:
        text = _docstring_text(name, tree)
        if text:
            yield Document(f"stdlib-docs:{name}", text)
    for name, source, _ in parsed:
        if name.partition(".")[0] not in _NO_SOURCE and source.strip():
            yield Document(f"stdlib-source:{name}", source)


def _topic_documents(root: Path) -> Iterator[Document]:
    path = root / "pydoc_data" / "topics.py"
    if not path.is_file():
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            for key in sorted(topics):
                yield Document(f"python-reference:{key}", topics[key].strip())


def _docstring_text(module: str, tree: ast.Module) -> str:
    """A module's docstrings as pydoc would list them: `class X(...)` / `def f(...)` then the doc."""
    sections = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(f"module {module}\n\n{doc}")

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    sections.append(f"{_heading(node, prefix)}\n\n{doc}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return "\n\n".join(sections)


def _heading(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, prefix: str) -> str:
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        return f"class {prefix}{node.name}" + (f"({bases})" if bases else "")
    keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return f"{keyword} {prefix}{node.name}({ast.unparse(node.args)})"
