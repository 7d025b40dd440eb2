"""olmo: train and use OLMo-family open language models from one command line, and from Python.

    import olmo_cli as olmo
    m = olmo.load("runs/olmo-tiny")
    m.generate("Language modeling is", max_new_tokens=32)

The Python API (`olmo_cli.api`) is reached lazily: `import olmo_cli` imports nothing else (every module
of the package imports it, for `__version__`), and the first use of `olmo_cli.load`, `Model`,
`ChatSession` or `Tokenizer` imports the API and torch (docs/architecture.md, the layers).

`olmo_cli.load` is also the engine package that opens checkpoints (`olmo_cli/load/`): called, that
package is the API's `load(path, *, device="cpu", dtype="auto")`; its modules stay reachable as before.
"""

import sys
import types
from typing import Any

__version__ = "0.1.0"

_API_NAMES = ("ChatReply", "ChatSession", "Model", "Tokenizer")


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from olmo_cli import api  # the first use: the API, and torch with it

        return getattr(api, name)
    if name == "load":
        import olmo_cli.load as package  # made callable as it is attached here, see _Package

        return package
    raise AttributeError(f"module 'olmo_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_NAMES, "load"})


class _LoadPackage(types.ModuleType):
    """The `olmo_cli.load` package, callable as the Python API's `load`."""

    def __call__(self, path: Any, **options: Any) -> Any:
        """olmo_cli.load(path, *, device="cpu", dtype="auto") -> olmo_cli.Model (see olmo_cli.api.load)."""
        from olmo_cli.api import load

        return load(path, **options)


class _Package(types.ModuleType):
    """This package's module: when the import system attaches the `load` subpackage, it makes it callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "load" and type(value) is types.ModuleType:
            value.__class__ = _LoadPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
