"""Promises the repository makes about itself: CI runs the README's test command, and the wheel
carries what an installed `olmo` needs."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_commands = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_commands) == 1, "the README should show one test command"
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci_lines


def test_readme_install_avoids_the_cuda_download():
    # Every install line on a CPU machine goes through the constraints file pinning the CPU wheel, but
    # one with --no-deps (upstream's data files), which resolves no dependency and so cannot fetch torch.
    installs = [c for c in _readme_commands() if c.startswith("pip install")]
    assert installs and all("-c constraints/cpu.txt" in c or " --no-deps " in f"{c} " for c in installs)
    assert any("--no-deps" not in c for c in installs)
    pins = [
        line for line in (ROOT / "constraints/cpu.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert pins == ["torch==2.13.0"]


def test_wheel_ships_presets_and_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("olmo_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "presets").glob("*.yaml")}
    assert {f"olmo_cli/presets/{p}" for p in presets} <= names
    assert "olmo_cli/app.py" in names and "olmo_cli/config/schema.py" in names
    assert "olmo_cli/data/builtin/tiny-bpe-4096.json" in names  # the tiny preset's offline tokenizer
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "olmo = olmo_cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # Installed from the wheel (not the source tree), olmo finds its presets inside the package.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = "import olmo_cli.config.presets as p; print(p.preset_dir()); print(','.join(p.preset_names()))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(target / "olmo_cli" / "presets")
    assert set(out[1].split(",")) == {p.removesuffix(".yaml") for p in presets}
