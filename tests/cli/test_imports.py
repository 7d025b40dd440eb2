"""Import direction (docs/architecture.md rules 1, 2, 15, 17): the engine never imports the CLI layer,
and the CLI layer imports nothing heavy until a command runs.

    commands/, app.py, ui.py, __main__.py   the CLI layer: typer and rich live here, torch does not
    everything else under olmo_cli/         the engine: torch yes, typer/rich/ui never
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ._helpers import ROOT, clean_env, olmo_executable, run_watched

PACKAGE = ROOT / "olmo_cli"
CLI_LAYER = {"olmo_cli.app", "olmo_cli.ui", "olmo_cli.__main__"}
UI_PACKAGES = {"typer", "rich", "click", "shellingham"}
# What a command module may import only inside the function that needs it.
HEAVY = {
    "torch",
    "numpy",
    "safetensors",
    "transformers",
    "tokenizers",
    "wandb",
    "requests",
    "cached_path",
    "pydantic",
    "yaml",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_cli_layer(module: str) -> bool:
    return module in CLI_LAYER or module == "olmo_cli.commands" or module.startswith("olmo_cli.commands.")


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
ENGINE = sorted(m for m in MODULES if not _is_cli_layer(m))
COMMANDS = sorted(m for m in MODULES if _is_cli_layer(m) and m != "olmo_cli.__main__")


def _module_level(body: list[ast.stmt]) -> list[ast.AST]:
    """The nodes that run when the module is imported: not function bodies, not `if TYPE_CHECKING:`."""
    nodes: list[ast.AST] = []
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            nodes += _module_level(stmt.orelse)
        elif isinstance(stmt, (ast.ClassDef, ast.If, ast.Try, ast.With)):
            nodes.append(stmt)
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(stmt, field, []):
                    nodes += _module_level(child.body if isinstance(child, ast.ExceptHandler) else [child])
        else:
            nodes += list(ast.walk(stmt))
    return nodes


def _imports(module: str, *, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a module; relative imports resolved."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = _module_level(tree.body) if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from olmo_cli import ui` names a module in the alias, not in `module`
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def test_module_level_walk_skips_functions_and_type_checking():
    tree = ast.parse(
        "import a\n"
        "if TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "try:\n    import d\nexcept ImportError:\n    import e\n"
        "def f():\n    import g\n"
        "class K:\n    import h\n    def m(self):\n        import i\n"
    )
    names = {alias.name for n in _module_level(tree.body) if isinstance(n, ast.Import) for alias in n.names}
    assert names == {"a", "c", "d", "e", "h"}


def test_module_discovery_sees_both_layers():
    assert {"olmo_cli.config.schema", "olmo_cli.errors"} <= set(ENGINE)
    assert {"olmo_cli.app", "olmo_cli.commands.presets", "olmo_cli.ui"} <= set(COMMANDS)
    assert _imports("olmo_cli.commands.presets")  # the AST walk finds imports at all


@pytest.mark.parametrize("module", ENGINE)
def test_engine_module_imports_no_ui(module):
    bad = [
        f"line {line}: {name}"
        for line, name in _imports(module)
        if name.partition(".")[0] in UI_PACKAGES or _is_cli_layer(name)
    ]
    assert not bad, (
        f"{module} is engine code and must not import the CLI layer (typer, rich, olmo_cli.ui, commands); "
        f"report progress through a callback or iterator that ui.py renders: {bad}"
    )


# ---- the engine's layers: each package imports only those below it ---------------------------------

# Modules at the bottom, usable by every package: they import nothing of ours but errors (and the
# package's own __version__).
BASE = {"olmo_cli", "errors", "atomic", "untrusted", "memory", "dirlock", "world", "offline"}
_BELOW_FORMATS = BASE | {"config", "data", "model", "checkpoint"}
# What each engine package may import (its own modules aside); the CLI layer may import anything.
ALLOWED = {
    **{name: BASE for name in BASE},
    "config": BASE,
    "data": BASE | {"config"},
    "hub": BASE | {"config"},
    "model": BASE | {"config"},
    "checkpoint": BASE | {"config", "model"},
    "convert": _BELOW_FORMATS,
    "quant": _BELOW_FORMATS,
    "load": _BELOW_FORMATS | {"convert", "quant"},
    "eval": _BELOW_FORMATS | {"convert", "quant", "load"},
    "train": _BELOW_FORMATS | {"convert", "quant", "load", "eval", "hub"},
}
# The Python API sits on top of the engine: it may import every engine package (never the CLI layer).
ALLOWED["api"] = set(ALLOWED)
# `olmo serve` answers HTTP over the Python API's loaded model: the one package above the API.
ALLOWED["serve"] = set(ALLOWED)
# The one import that points up: the package's own __init__ reaches the Python API (and the `load`
# package, callable as `olmo_cli.load(path)`) from its module `__getattr__`, on first use, so
# `import olmo_cli` stays light. Allowed only inside functions, never at module level.
LAZY_FROM_PACKAGE = {"api", "load"}


def _unit(module: str) -> str:
    """The layer a module belongs to: its package under olmo_cli, or the top-level module's name."""
    parts = module.split(".")
    # `from olmo_cli import __version__` names an attribute of the package, not a module
    return parts[1] if len(parts) > 1 and f"olmo_cli.{parts[1]}" in MODULES else "olmo_cli"


def test_every_engine_package_has_a_layer():
    assert {_unit(m) for m in ENGINE} <= set(ALLOWED), (
        "add the new package to ALLOWED (and docs/architecture.md)"
    )


@pytest.mark.parametrize("module", ENGINE)
def test_engine_imports_run_one_way(module):
    # Every import counts: module level, inside functions and under TYPE_CHECKING alike.
    own = _unit(module)
    lazy = (
        set(_imports(module)) - set(_imports(module, module_level_only=True))
        if module == "olmo_cli"
        else set()
    )
    bad = sorted(
        {
            f"line {line}: {name}"
            for line, name in _imports(module)
            if name.startswith("olmo_cli.")
            and not _is_cli_layer(name)
            and _unit(name) != own
            and _unit(name) not in ALLOWED[own]
            and not ((line, name) in lazy and _unit(name) in LAZY_FROM_PACKAGE)
        }
    )
    assert not bad, (
        f"{module} ({own}/) may import only {sorted(ALLOWED[own])}: {bad}; move the shared piece down to "
        "the lowest package that needs it (docs/architecture.md, the layers)"
    )


def test_the_package_reaches_the_api_only_lazily(tmp_path):
    at_import = {_unit(name) for _, name in _imports("olmo_cli", module_level_only=True)}
    assert not at_import & LAZY_FROM_PACKAGE, "olmo_cli/__init__.py imports the API at module level"
    assert {_unit(name) for _, name in _imports("olmo_cli")} & LAZY_FROM_PACKAGE  # the check sees them
    proc, imported = run_watched(["import", "olmo_cli"], ["torch", "numpy", "typer", "rich"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not imported, f"`import olmo_cli` loaded {imported} (package: first importer)"


def test_the_layer_check_sees_upward_imports():
    assert _unit("olmo_cli.train.loop") == "train" and _unit("olmo_cli.world") == "world"
    assert "train" not in ALLOWED["checkpoint"] and "load" not in ALLOWED["model"]
    assert "olmo_cli.checkpoint.kind" in {name for _, name in _imports("olmo_cli.load.read")}
    assert _unit("olmo_cli.__version__") == "olmo_cli"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_click_directly(module):
    # Typer 0.29 vendors its own Click as typer._click; a separately installed click is a different
    # library whose exceptions and contexts Typer does not recognise.
    bad = [f"line {line}: {name}" for line, name in _imports(module) if name.partition(".")[0] == "click"]
    assert not bad, f"{module} imports click; use typer's API instead: {bad}"


@pytest.mark.parametrize("module", COMMANDS)
def test_cli_module_imports_nothing_heavy_at_module_level(module):
    bad = [
        f"line {line}: {name}"
        for line, name in _imports(module, module_level_only=True)
        if name.partition(".")[0] in HEAVY
    ]
    assert not bad, (
        f"{module} imports {bad} at module level; move the import into the function that needs it "
        "so `olmo --help` and tab completion stay instant"
    )


# ---- the same rules, observed in fresh interpreters -----------------------------------------------

NAMED_ENGINE_ENTRY_POINTS = [
    "olmo_cli.model",
    "olmo_cli.config.schema",
    "olmo_cli.config.loader",
    "olmo_cli.config.derived",
]


@pytest.mark.parametrize("module", NAMED_ENGINE_ENTRY_POINTS)
def test_importing_engine_loads_no_typer_or_rich(module, tmp_path):
    proc, imported = run_watched(["import", module], ["typer", "rich", "click"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not imported, f"`import {module}` loaded {imported} (package: first importer)"


def test_importing_every_engine_module_loads_no_typer_or_rich(tmp_path):
    proc, imported = run_watched(["import", *ENGINE], ["typer", "rich", "click"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not imported, f"engine modules loaded {imported} (package: first importer)"


def test_importing_the_cli_layer_loads_no_torch(tmp_path):
    proc, imported = run_watched(["import", *COMMANDS], ["torch", "numpy", "transformers"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not imported, f"the CLI layer loaded {imported} at import time (package: first importer)"


HEAVY_FOR_HELP = {"torch", "numpy", "transformers", "safetensors"}


def _imported_by(cmd: list[str]) -> set[str]:
    """Run a command under `python -X importtime`; return every module name it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd],
        cwd=ROOT,
        env=clean_env(COLUMNS="100"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: olmo" in proc.stdout
    names = {
        line.rpartition("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "olmo_cli.app" in names, "importtime printed nothing we recognise"
    return names


@pytest.mark.parametrize(
    "args",
    [["--help"], ["presets", "--help"], ["presets", "show", "--help"], ["presets", "list", "--help"]],
    ids=" ".join,
)
def test_help_through_the_olmo_script_imports_no_torch(args):
    heavy = {n.partition(".")[0] for n in _imported_by([olmo_executable(), *args])} & HEAVY_FOR_HELP
    assert not heavy, f"`olmo {' '.join(args)}` imported {sorted(heavy)}"


def test_help_through_python_m_imports_no_torch():
    names = _imported_by(["-m", "olmo_cli", "--help"])
    heavy = {n.partition(".")[0] for n in names} & HEAVY_FOR_HELP
    assert not heavy, f"`python -m olmo_cli --help` imported {sorted(heavy)}"
    assert "olmo_cli.config.schema" not in names
