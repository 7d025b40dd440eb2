"""Run in a fresh interpreter: record which module first imports each watched package.

    python _import_watch.py REPORT.json torch,pydantic olmo ARGS...     # run olmo as the console script does
    python _import_watch.py REPORT.json typer,rich import MOD [MOD...]  # import modules, in order

REPORT.json gets {package: importing module} for every watched package that ended up in sys.modules,
written at exit (so also when olmo leaves through sys.exit, as completion always does).
"""

import atexit
import json
import sys

report_path, watched, mode, *rest = sys.argv[1:]
WATCHED = set(watched.split(","))
first_importer: dict[str, str] = {}


class _Watcher:
    """A meta path finder that finds nothing: it only notes who asked for a watched package."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in WATCHED and top not in first_importer:
            frame = sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                internal = module.startswith(("importlib", "_frozen_importlib")) or module == __name__
                if not internal and module.partition(".")[0] != top:
                    break
                frame = frame.f_back
            first_importer[top] = module if frame is not None else "?"
        return None


def _write_report() -> None:
    found = {top: who for top, who in first_importer.items() if top in sys.modules}
    with open(report_path, "w") as f:
        json.dump(found, f)


sys.meta_path.insert(0, _Watcher())
atexit.register(_write_report)

if mode == "import":
    import importlib

    for module in rest:
        importlib.import_module(module)
else:
    # What the `olmo` console script does: `from olmo_cli.app import main; sys.exit(main())`.
    sys.argv = ["olmo", *rest]
    from olmo_cli.app import main

    sys.exit(main())
