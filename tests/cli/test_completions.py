"""Tab completion, through the installed `olmo` and the committed scripts in completions/.

The static scripts only pass the words typed so far to `olmo` with _OLMO_COMPLETE set; the candidates
come from the installed `olmo` at <TAB> time. So we check both halves: the files are what the current
Typer generates, and `olmo` answers each shell's protocol with the right candidates, quickly (no torch,
no config loading).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from ._helpers import ROOT, clean_env, run_olmo, run_watched

PRESETS = [
    *("1b", "65b", "7b", "7b-0424", "7b-0724", "7b-twin-2t"),
    *("olmo2-13b", "olmo2-1b", "olmo2-32b", "olmo2-7b", "olmo2-tiny", "tiny"),
]
SHELLS = ("bash", "zsh", "fish")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the committed scripts ----------------------------------------------------------------------


def test_committed_scripts_are_current():
    stale = _load_generator().stale_files()
    assert not stale, (
        f"out of date: {', '.join(str(p.relative_to(ROOT)) for p in stale)}; "
        "run `python scripts/gen_completions.py` and commit the result"
    )


def test_generator_check_flag_names_stale_files(tmp_path, monkeypatch, capsys):
    gen = _load_generator()
    monkeypatch.setattr(gen, "OUT_DIR", tmp_path)
    assert gen.main(["--check"]) == 1  # nothing written yet: all three are stale
    err = capsys.readouterr().err
    assert all(f"olmo.{shell}" in err for shell in SHELLS)
    assert gen.main([]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["olmo.bash", "olmo.fish", "olmo.zsh"]
    assert gen.main(["--check"]) == 0
    (tmp_path / "olmo.zsh").write_text("# edited by hand\n")
    capsys.readouterr()
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "olmo.zsh" in err and "olmo.bash" not in err and "gen_completions.py" in err


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_equal_show_completion_output(shell):
    # The generator calls a private Typer function; this pins it to what the public
    # `olmo --show-completion SHELL` prints, so a Typer upgrade that changes either shows up here.
    proc = run_olmo("--show-completion", shell, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "completions" / f"olmo.{shell}").read_text()
    assert "_OLMO_COMPLETE" in proc.stdout


# ---- the protocol each script speaks, answered by the installed olmo -----------------------------


def _bash(line: str) -> list[str]:
    """What the bash script asks: the words so far, and the index of the word under the cursor."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    proc = run_olmo(_OLMO_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(cword))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _zsh(line: str) -> str:
    proc = run_olmo(_OLMO_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=line)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _fish(line: str, action: str = "get-args") -> subprocess.CompletedProcess[str]:
    return run_olmo(
        _OLMO_COMPLETE="complete_fish", _TYPER_COMPLETE_FISH_ACTION=action, _TYPER_COMPLETE_ARGS=line
    )


def test_bash_completes_preset_names():
    assert _bash("olmo presets show ") == PRESETS
    assert _bash("olmo presets show 7b-0") == ["7b-0424", "7b-0724"]
    assert _bash("olmo presets show t") == ["tiny"]
    assert _bash("olmo presets show nothing-like-this") == []


def test_bash_completes_commands_and_options():
    assert _bash("olmo pre") == ["presets"]
    assert _bash("olmo presets ") == ["list", "show"]
    assert _bash("olmo presets sh") == ["show"]
    options = _bash("olmo presets show --")
    assert {"--config", "--set", "--gpus", "--json", "--help"} <= set(options)
    assert {"--version", "--debug"} <= set(_bash("olmo --"))


def test_zsh_completes_preset_names_and_commands():
    assert _zsh("olmo presets show 7b-0") == '_arguments \'*: :(("7b-0424"\n"7b-0724"))\''
    all_presets = _zsh("olmo presets show ")
    assert all(f'"{name}"' in all_presets for name in PRESETS)
    # Commands come with their help text after a colon.
    assert _zsh("olmo pre").startswith('_arguments \'*: :(("presets":"The shipped presets')


def test_fish_completes_preset_names_and_commands():
    proc = _fish("olmo presets show 7b-0")
    assert proc.returncode == 0 and proc.stdout.split() == ["7b-0424", "7b-0724"]
    assert _fish("olmo presets show ").stdout.split() == PRESETS
    proc = _fish("olmo pre")
    assert proc.stdout.startswith("presets\tThe shipped presets")
    # `is-args` answers through the exit status: 0 = olmo has candidates, 1 = let fish complete files.
    assert _fish("olmo presets show 7b", action="is-args").returncode == 0
    assert _fish("olmo presets show zzz", action="is-args").returncode == 1


# ---- completion is cheap: no torch, no config loading ---------------------------------------------

_COMPLETIONS = {
    "preset names": {
        "_OLMO_COMPLETE": "complete_bash",
        "COMP_WORDS": "olmo presets show 7b",
        "COMP_CWORD": "3",
    },
    "commands": {"_OLMO_COMPLETE": "complete_bash", "COMP_WORDS": "olmo pre", "COMP_CWORD": "1"},
    "options": {"_OLMO_COMPLETE": "complete_bash", "COMP_WORDS": "olmo presets show --", "COMP_CWORD": "3"},
    "zsh": {"_OLMO_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "olmo presets show "},
    "fish": {
        "_OLMO_COMPLETE": "complete_fish",
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        "_TYPER_COMPLETE_ARGS": "olmo presets show ",
    },
}
_NEVER = ["torch", "numpy", "yaml", "safetensors", "transformers", "wandb"]


@pytest.mark.parametrize("case", list(_COMPLETIONS))
def test_completion_imports_nothing_heavy(case, tmp_path):
    proc, imported = run_watched(
        ["olmo"], [*_NEVER, "pydantic", "olmo_cli"], tmp_path, env=_COMPLETIONS[case]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the completion printed no candidates"
    heavy = {pkg: who for pkg, who in imported.items() if pkg in _NEVER}
    assert not heavy, f"tab completion imported {heavy} (package: first importer)"
    # Typer 0.29 itself validates parameter values with pydantic while it resolves the command line
    # (typer._coercion -> typer._adapters), so pydantic may be loaded, but never by olmo's own code
    # (that would mean the config schema is being imported).
    assert imported.get("pydantic", "typer").startswith("typer"), imported


def test_preset_completion_reads_only_file_names():
    # complete_preset runs at every <TAB>: it lists presets/*.yaml and must not parse YAML or build
    # the pydantic schema (both cost more than the whole completion should).
    probe = (
        "import json, sys\n"
        "from olmo_cli.commands._options import complete_preset\n"
        "names = complete_preset('7b')\n"
        "print(json.dumps({'names': names, 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["names"] == ["7b", "7b-0424", "7b-0724", "7b-twin-2t"]
    loaded = set(result["modules"])
    assert not {"yaml", "pydantic", "torch"} & loaded
    assert not {f"olmo_cli.config.{m}" for m in ("schema", "loader", "yamlio", "derived")} & loaded


# ---- the scripts themselves, in real shells where installed ---------------------------------------


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed on this machine")
    return path


def test_bash_script_parses():
    bash = _need("bash")
    proc = subprocess.run(
        [bash, "-n", str(ROOT / "completions" / "olmo.bash")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_bash_script_completes_end_to_end():
    # Source the committed script in a real bash and call its completion function the way bash's
    # `complete -F` does: COMP_WORDS/COMP_CWORD set, the command name as $1.
    bash = _need("bash")
    script = ROOT / "completions" / "olmo.bash"
    program = (
        f"source '{script}'\n"
        "complete -p olmo\n"
        "COMP_WORDS=(olmo presets show 7b-0); COMP_CWORD=3\n"
        "_olmo_completion olmo\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -o default -F _olmo_completion olmo"
    assert lines[1:] == ["7b-0424", "7b-0724"]


def test_zsh_script_parses():
    zsh = _need("zsh")
    proc = subprocess.run([zsh, "-n", str(ROOT / "completions" / "olmo.zsh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_fish_script_parses():
    fish = _need("fish")
    proc = subprocess.run(
        [fish, "--no-execute", str(ROOT / "completions" / "olmo.fish")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
