"""Hostile configs cannot exhaust the machine: YAML alias bombs, `${...}` interpolation that doubles a
value per key or refers in circles, nesting ten thousand levels deep, binary and non-UTF-8 files, and
the sharp edges of `--set` -- given as `--config`, as `--set`, and inside a checkpoint's config.yaml.

Each case runs `olmo` with its address space capped (so a bomb that got through would fail with a
MemoryError instead of taking the machine) and asserts: the exit code (2 for the user's own config, 4
for a checkpoint's), one `error:` line naming the file or key, no traceback, and an answer well inside
15 seconds. One case of each kind runs the installed `olmo` in a subprocess, as a user does, and is held
to the child's peak memory too; the others run its `main` in this process, capped a little above what
the process has mapped already, which spares a second or two of torch's import per case.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli._helpers import clean_env, olmo_executable, run_olmo_here

TIME_LIMIT_S = 15.0
ADDRESS_SPACE = 3 * 2**30  # torch's import alone maps ~0.7 GiB
PEAK_RSS = 1 * 2**30  # a refused config costs what the import of olmo (and torch) costs
HEADROOM = 512 * 2**20  # what a refusal in this process may map beyond what the process has mapped


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int | None  # bytes; None in this process (bounded by HEADROOM instead)


# Starts `olmo` from a fresh small process and reports that child's own peak RSS. Linux's wait4 reports
# for a child at least the resident size of the process it was forked from (exec records the old memory
# map's high-water mark), so a child forked straight from this test process (over 1 GiB after a few
# hundred tests) would be charged for the suite's memory, not its own. This runner is small when it
# forks, so its child's figure is the child's.
_RUNNER = """
import os, resource, signal, sys
limit, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, lambda n, _f: os.kill(pid, n))
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_bounded(*args: str, cwd: Path) -> Outcome:
    """`olmo ARGS` with capped memory, killed after twice the time limit, and its own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as d:
        report = Path(d) / "peak-rss"
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(ADDRESS_SPACE), str(report), olmo_executable(), *args],
            cwd=cwd,
            env=clean_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=2 * TIME_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Outcome(
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            seconds,
            int(report.read_text()) if report.is_file() else None,
        )


def _mapped() -> int:
    """The address space this process has mapped now (VmSize), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@contextmanager
def address_space_cap(headroom: int) -> Iterator[None]:
    """This process may map at most `headroom` bytes more while the block runs (the soft limit only,
    so it can be lifted again)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _mapped() + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_here(*args: str, cwd: Path) -> Outcome:
    """`olmo ARGS` through its `main` in this process, under `address_space_cap(HEADROOM)`. The modules
    a command imports when it runs are imported first, so that the cap is spent on the input alone."""
    import torch  # noqa: F401

    import olmo_cli.load.build  # noqa: F401
    import olmo_cli.load.read  # noqa: F401

    with address_space_cap(HEADROOM):
        start = time.monotonic()
        proc = run_olmo_here(*args, cwd=cwd)
        seconds = time.monotonic() - start
    return Outcome(proc.returncode, proc.stdout, proc.stderr, seconds, None)


def run_case(*args: str, cwd: Path, own_process: bool) -> Outcome:
    return run_bounded(*args, cwd=cwd) if own_process else run_here(*args, cwd=cwd)


def assert_refused(outcome: Outcome, code: int, *needles: str) -> str:
    """The one `error:` line of a refusal that came quickly and cheaply; returns it."""
    text = outcome.stdout + outcome.stderr
    assert outcome.seconds < TIME_LIMIT_S, f"took {outcome.seconds:.1f}s:\n{text}"
    assert "Traceback" not in text and "MemoryError" not in text, text
    assert outcome.returncode == code, f"exit {outcome.returncode}, wanted {code}:\n{text}"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    if outcome.peak_rss is not None:
        assert outcome.peak_rss < PEAK_RSS, f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB"
    return errors[0]


# ---- hostile documents ----------------------------------------------------------------------------


def billion_laughs(levels: int = 9, fan_out: int = 9) -> str:
    """~1 KB of YAML whose aliases expand to fan_out**levels strings (9**9: 387 million)."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * fan_out) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan_out) + "]")
    lines.append(f"run_name: *a{levels}")
    return "\n".join(lines) + "\n"


def doubling_chain(n: int = 60) -> str:
    """`aK: ${aK-1}${aK-1}`: a value of 2**60 characters in sixty lines, if anything built it."""
    lines = ["a0: x"] + [f"a{i}: ${{a{i - 1}}}${{a{i - 1}}}" for i in range(1, n + 1)]
    return "\n".join(lines) + f"\nrun_name: ${{a{n}}}\n"


def list_doubling_chain(n: int = 60) -> str:
    lines = ["l0: [x]"] + [f"l{i}: ['${{l{i - 1}}}', '${{l{i - 1}}}']" for i in range(1, n + 1)]
    return "\n".join(lines) + f"\nevaluators: ${{l{n}}}\n"


def reference_chain(n: int = 200) -> str:
    lines = [f"k{i}: ${{k{i + 1}}}" for i in range(n)] + [f"k{n}: 1", "seed: ${k0}"]
    return "\n".join(lines) + "\n"


DEEP = 10_000
DEEP_OVERRIDE = "model=" + "[" * DEEP  # the --set case run in a process of its own

HOSTILE_YAML: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (document, what the error line must say besides the file's name)
    "alias-bomb": (billion_laughs(), ("line 1", "anchor &a0")),
    "doubling-chain": (doubling_chain(), ("a21", "1 MiB")),
    "list-doubling-chain": (list_doubling_chain(), ("l", "1 MiB")),
    "self-cycle": ("run_name: ${run_name}\n", ("run_name", "cycle")),
    "two-key-cycle": ("run_name: ${seed}\nseed: ${run_name}\n", ("cycle",)),
    "reference-chain": (reference_chain(), ("more than 32 keys",)),
    "deep-flow-lists": ("model: " + "[" * DEEP + "\n", ("deeper than 64 levels",)),
    "deep-flow-maps": ("model: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n", ("deeper than 64 levels",)),
    "deep-block-lists": ("model:\n" + "".join("  " * i + "-\n" for i in range(1, 200)), ("deeper than 64",)),
    "deep-nested-resolver": (
        "run_name: " + "${oc.env:X," * 300 + "y" + "}" * 300 + "\n",
        ("run_name", "deeper than 128 levels"),
    ),
    "many-values": ("data:\n  paths: [" + "1," * 4_000_000 + "1]\n", ("line 2", "more than 250,000 values")),
    "huge-integer": ("model:\n  n_layers: " + "9" * 5000 + "\n", ("line 2", "cannot be read")),
    "bool-for-int": ("model:\n  n_layers: true\n", ("1 invalid setting",)),
}


def hostile_bytes() -> dict[str, tuple[bytes, tuple[str, ...]]]:
    rng = random.Random(14)
    noise = rng.randbytes(4096)
    no_nul = bytes(b for b in noise if b) + b"\xff"
    return {
        "random-bytes": (noise, ("NUL bytes",)),
        "random-bytes-without-nul": (no_nul, ("not UTF-8",)),
        "nul-in-text": (b"run_name: x\x00y\nseed: 1\n", ("NUL bytes",)),
        "utf-16-with-bom": ("run_name: x\nseed: 1\n".encode("utf-16"), ("UTF-16",)),
        "utf-32-with-bom": ("run_name: x\n".encode("utf-32"), ("UTF-32",)),
        "latin-1": ("run_name: café\n".encode("latin-1"), ("not UTF-8", "line 1")),
        "control-characters": (b"run_name: a\x07b\n", ("control character U+0007",)),
    }


HOSTILE_BYTES = hostile_bytes()


def write_case(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    if name in HOSTILE_YAML:
        path.write_text(HOSTILE_YAML[name][0], encoding="utf-8")
    else:
        path.write_bytes(HOSTILE_BYTES[name][0])
    return path


def needles(name: str) -> tuple[str, ...]:
    return HOSTILE_YAML[name][1] if name in HOSTILE_YAML else HOSTILE_BYTES[name][1]


def test_the_alias_bomb_is_small_and_would_be_huge():
    import yaml

    text = billion_laughs()
    assert len(text.encode()) < 1100
    # Plain PyYAML builds the shared structure; flattening it would make 9**9 strings.
    data = yaml.safe_load(text)
    assert len(data["a9"]) == 9 and data["a9"][0] is data["a8"]


# ---- as --config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*HOSTILE_YAML, *HOSTILE_BYTES])
def test_hostile_config_file_is_one_exit_2_message(tmp_path, name):
    path = write_case(tmp_path, name)
    alone = name == "alias-bomb"
    outcome = run_case("presets", "show", "--config", str(path), cwd=tmp_path, own_process=alone)
    line = assert_refused(outcome, 2, *needles(name))
    assert path.name in line


def test_a_config_file_over_16_mib_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(b"run_name: x\n# ")
        f.truncate(64 * 2**20)  # sparse: a 64 MiB file that costs no disk
    outcome = run_here("presets", "show", "--config", str(path), cwd=tmp_path)
    assert_refused(outcome, 2, "huge.yaml", "larger than 16 MiB")


def test_a_config_of_15_mib_is_read_in_bounded_time(tmp_path):
    # Under the size cap, 15 MiB of comments and long lines: libyaml scans them, not Python.
    path = tmp_path / "long.yaml"
    comments = ("# " + "c" * 1000 + "\n") * 15_000
    path.write_text("run_name: " + "r" * 100_000 + "\n" + comments + "seed: 7\n")
    outcome = run_here("presets", "show", "--config", str(path), cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    assert "seed: 7" in outcome.stdout
    assert outcome.seconds < TIME_LIMIT_S


def test_a_config_can_still_say_true_for_switches_and_numbers_for_counts(tmp_path):
    # The control for the cases above: the same command accepts a sane file.
    path = tmp_path / "fine.yaml"
    path.write_text("model:\n  n_layers: 3\n  rope: true\nrun_name: r-${model.n_layers}\n")
    outcome = run_here("presets", "show", "--config", str(path), cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert "n_layers: 3" in outcome.stdout and "rope: true" in outcome.stdout
    assert "run_name: r-3" in outcome.stdout


# ---- as --set -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_layers", ("override 'model.n_layers' has no value",)),
        ("--model.n-layers", ("has no value",)),
        ("model.n_layers=true", ("1 invalid setting",)),
        ("optimizer.learning_rate=false", ("1 invalid setting",)),
        ("optimizer.betas=[true, 0.95]", ("1 invalid setting",)),
        ("model=&m {n_layers: 2}", ("anchor &m",)),
        ("model=*m", ("alias *m",)),
        (DEEP_OVERRIDE, ("deeper than 64 levels",)),
        ("model=" + "{a: " * DEEP, ("deeper than 64 levels",)),
        ("a" + ".a" * 1000 + "=1", ("more than 64 levels deep",)),
        ("model.n_layers=" + "9" * 5000, ("cannot be read",)),
        ("run_name=${run_name}", ("run_name", "cycle")),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_hostile_override_is_one_exit_2_message(tmp_path, override, expected):
    alone = override == DEEP_OVERRIDE
    outcome = run_case("presets", "show", "tiny", "--set", override, cwd=tmp_path, own_process=alone)
    assert_refused(outcome, 2, *expected)
    text = outcome.stdout + outcome.stderr
    if "invalid setting" in expected[0]:
        field = override.split("=")[0]
        assert f"{field}: expected" in text and "got the boolean" in text and "(from --set)" in text
    if "has no value" in expected[0]:
        assert "=VALUE" in text  # the hint says how to write it


def test_a_bool_in_an_int_field_of_a_file_names_the_field(tmp_path):
    path = write_case(tmp_path, "bool-for-int")
    outcome = run_here("presets", "show", "--config", str(path), cwd=tmp_path)
    assert_refused(outcome, 2, "bool-for-int.yaml")
    assert "model.n_layers: expected an integer, got the boolean true" in outcome.stderr + outcome.stdout


# ---- inside a checkpoint --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def checkpoint_template(tmp_path_factory) -> Path:
    """An unsharded checkpoint of a 1-layer, 32-wide model (weights only: what generate reads)."""
    from tests._fixtures import tiny_config, write_checkpoint

    cfg = tiny_config(
        *("model.d_model=32", "model.n_heads=4", "model.n_layers=1", "model.max_sequence_length=32"),
        *("model.vocab_size=64", "model.embedding_size=64", "model.eos_token_id=0", "model.pad_token_id=1"),
    )
    root = tmp_path_factory.mktemp("bomb-ckpt") / "run"
    return write_checkpoint(root, cfg, name="step1-unsharded")[0]


def planted(template: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the template checkpoint whose config.yaml is the hostile case `name`."""
    checkpoint = tmp_path / "run" / template.name
    shutil.copytree(template, checkpoint)
    source = write_case(tmp_path, name)
    shutil.copyfile(source, checkpoint / "config.yaml")
    return checkpoint


def test_the_template_checkpoint_reads_cleanly(checkpoint_template):
    from olmo_cli.load.read import read_checkpoint

    found = read_checkpoint(checkpoint_template)
    assert found.config.model.n_layers == 1


CHECKPOINT_CASES = [
    "alias-bomb",
    "doubling-chain",
    "list-doubling-chain",
    "self-cycle",
    "reference-chain",
    "deep-flow-lists",
    "deep-flow-maps",
    "huge-integer",
    "bool-for-int",
    "random-bytes",
    "utf-16-with-bom",
    "latin-1",
]


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_hostile_checkpoint_config_in_generate_is_one_exit_4_message(checkpoint_template, tmp_path, name):
    checkpoint = planted(checkpoint_template, tmp_path, name)
    args = ("generate", str(checkpoint), "--prompt", "x")
    outcome = run_case(*args, cwd=tmp_path, own_process=name == "alias-bomb")
    extra = () if name == "bool-for-int" else needles(name)
    line = assert_refused(outcome, 4, str(checkpoint / "config.yaml"), *extra)
    assert line


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (("convert-hf", "{ckpt}", "--output", "{tmp}/hf"), "alias-bomb"),
        (("eval", "{ckpt}", "--perplexity", "{tmp}/none.npy"), "doubling-chain"),
        (("resume", "--load-path", "{ckpt}"), "alias-bomb"),
        (("resume", "--load-path", "{ckpt}"), "doubling-chain"),
        (("finetune", "--checkpoint", "{ckpt}", "--data", "{tmp}/none.npy"), "deep-flow-maps"),
        (("quantize", "{ckpt}", "--method", "int8", "--output", "{tmp}/hf"), "self-cycle"),
        (("inspect-batch", "0", "--run", "{ckpt}"), "random-bytes"),
    ],
    ids=["convert-hf", "eval", "resume-alias", "resume-doubling", "finetune", "quantize", "inspect-batch"],
)
def test_hostile_checkpoint_config_elsewhere_is_one_exit_4_message(
    checkpoint_template, tmp_path, command, name
):
    checkpoint = planted(checkpoint_template, tmp_path, name)
    args = [a.format(ckpt=checkpoint, tmp=tmp_path) for a in command]
    outcome = run_case(*args, cwd=tmp_path, own_process=command[0] == "resume" and name == "alias-bomb")
    assert_refused(outcome, 4, "config.yaml", *needles(name))
    assert not (tmp_path / "hf").exists()
