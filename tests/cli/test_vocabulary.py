"""One vocabulary for options, and help that reads at 80 columns (issue 18 point 7): every --dtype of a
command that runs a model takes the same names; prose help is wrapped once by the terminal, not twice;
example commands fit an 80-column terminal as pasteable continued lines; flags show no type label; a
finished progress bar shows the average rate of the whole transfer."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import typer
from rich.progress import Task, TaskID

from olmo_cli.app import app
from olmo_cli.commands._help import EXAMPLE_WIDTH, reflow
from olmo_cli.errors import UsageError
from olmo_cli.ui import _AverageSpeedColumn
from olmo_cli.world import canonical_dtype, compute_dtype
from tests.cli._helpers import run_olmo_here

MODEL_DTYPES = {"auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"}
TOKEN_DTYPE_COMMANDS = {"olmo data tokenize", "olmo data inspect"}  # --dtype there is uint16/uint32


def _commands() -> list[tuple[str, Any, Any]]:
    found = []

    def walk(command: Any, path: str, parent: Any) -> None:
        ctx = command.make_context(path.rsplit(" ", 1)[-1], [], parent=parent, resilient_parsing=True)
        found.append((path, command, ctx))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}", ctx)

    walk(typer.main.get_command(app), "olmo", None)
    return found


COMMANDS = _commands()


def test_every_model_dtype_option_takes_the_same_names():
    seen = []
    for path, command, ctx in COMMANDS:
        for param in command.get_params(ctx):
            if "--dtype" in param.opts and path not in TOKEN_DTYPE_COMMANDS:
                seen.append(path)
                assert {c.value for c in param.type_descriptor.choices} == MODEL_DTYPES, path
    assert {"olmo generate", "olmo chat", "olmo eval", "olmo convert-hf"} <= set(seen)


def test_the_names_mean_the_same_dtype_everywhere():
    cpu = torch.device("cpu")
    for short, long in [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")]:
        assert compute_dtype(short, cpu) == compute_dtype(long, cpu) == compute_dtype(long.upper(), cpu)
        assert canonical_dtype(short) == long
    assert compute_dtype("auto", cpu) == torch.float32
    with pytest.raises(UsageError, match="fp8") as caught:
        canonical_dtype("fp8")
    assert "bf16/bfloat16" in (caught.value.hint or "")


def test_convert_hf_takes_the_short_names(small_run, tmp_path):
    import json

    for name, expected in [("bf16", "bfloat16"), ("float16", "float16"), ("auto", "float32")]:
        out = tmp_path / name
        proc = run_olmo_here("convert-hf", str(small_run), "-o", str(out), "--dtype", name, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["dtype"] == expected
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == expected


def test_flags_show_no_type_label():
    for path, command, ctx in COMMANDS:
        for param in command.get_params(ctx):
            if getattr(param, "is_flag", False):  # -h/--help and the completion flags included
                assert not param.display_type_rich(ctx), (path, param.opts)
    help_text = run_olmo_here("generate", "--help", COLUMNS="80").stdout
    assert "<bool>" not in help_text and "--json" in help_text


def test_arguments_have_upper_case_names_in_usage():
    for path, command, ctx in COMMANDS:
        usage = " ".join(command.collect_usage_pieces(ctx))
        names = re.findall(r"[\[{]([^\]}]+)[\]}]", usage)
        for name in names:
            if name != "OPTIONS" and name != "ARGS":
                assert name == name.upper() and "..." not in name, (path, usage)


def test_prose_is_reflowed_and_laid_out_text_is_kept():
    text = """First line
    goes on here.

    A paragraph wrapped
    for the source file.

    Rules:
    - one rule
      continued
    - two

      olmo train --preset tiny
    """
    out = reflow(text)
    assert out.startswith("First line goes on here.\n\nA paragraph wrapped for the source file.")
    assert "Rules:\n- one rule\n  continued\n- two" in out  # an indented line: laid out by hand
    assert "\n\n  olmo train --preset tiny" in out


def test_long_examples_become_continued_lines_that_fit_80_columns():
    line = '  olmo generate hf/OLMo-1B-hf -p "Language models are very good" -n 64 --temperature 0.8 --seed 1'
    out = reflow("Examples:\n\nProse at the margin.\n\n" + line).split("\n\n")[2].split("\n")
    assert all(len(part) <= EXAMPLE_WIDTH for part in out)
    assert all(part.endswith(" \\") for part in out[:-1]) and out[1].startswith("      ")
    # Joined back as a shell joins continued lines: the same words, the quoted prompt kept whole.
    assert " ".join(part.removesuffix(" \\").strip() for part in out) == line.strip()
    assert any('"Language models are very good"' in part for part in out)
    # Every command's examples fit (JSON samples of task files are not commands and may be longer).
    for path, command, _ in COMMANDS:
        for text_line in (command.help or "").split("\n"):
            if text_line.strip().startswith("olmo "):
                assert len(text_line) <= EXAMPLE_WIDTH, (path, text_line)


def test_help_at_80_columns_has_no_ragged_lines():
    """A reflowed paragraph fills the lines it takes: no line of prose ends far short of the width
    while the next line continues the same sentence (what double wrapping looked like)."""
    out = run_olmo_here("checkpoints", "download", "--help", COLUMNS="80").stdout
    lines = [line.rstrip() for line in out.split("\n")]
    prose = [(a, b) for a, b in zip(lines, lines[1:], strict=False) if a.strip() and b.strip()]
    ragged = [a for a, b in prose if "│" not in a and len(a) < 60 and not a.strip().endswith((":", "\\"))]
    ragged = [a for a in ragged if not a.strip().startswith(("olmo ", "--", "Usage"))]
    assert ragged == [], ragged


def _task(**fields: Any) -> Task:
    return Task(TaskID(0), "total", 100.0, 100.0, _get_time=lambda: 0.0, fields=fields)


def test_a_finished_transfer_shows_its_average_rate():
    task = _task(began=100.0, ended=104.0, moved=8 * 2**20)
    task.finished_time = 4.0
    assert _AverageSpeedColumn().render(task).plain == "2.0 MiB/s"
    running = _task(began=100.0, ended=None, moved=1024)
    assert _AverageSpeedColumn().render(running).plain == "?"  # no samples yet: no made-up figure
