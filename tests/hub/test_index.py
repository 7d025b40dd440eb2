"""The checkpoint index (upstream's `Step,Checkpoint Directory` CSV), model names, checksum headers."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from olmo_cli.errors import ConfigError, UsageError
from olmo_cli.hub.checksum import checksum_from_headers
from olmo_cli.hub.index import (
    MODELS,
    check_model,
    load_index,
    model_for_config,
    official_index_url,
    parse_index,
    tokens_per_step,
)
from tests._http_server import Server

# Rows as upstream publishes them: sorted, a step listed twice (7B's 557000), no newline at the end.
UPSTREAM_ROWS = (
    "Step,Checkpoint Directory\n"
    "0,https://olmo-checkpoints.org/ai2-llm/olmo-medium/wvc30anm/step0-unsharded/\n"
    "1000,https://olmo-checkpoints.org/ai2-llm/olmo-medium/wvc30anm/step1000-unsharded/\n"
    "557000,https://olmo-checkpoints.org/ai2-llm/olmo-medium/z4z0x4m9/step557000-unsharded/\n"
    "557000,https://olmo-checkpoints.org/ai2-llm/olmo-medium/p067ktg9/step557000-unsharded/\n"
    "558223,r2://olmo-checkpoints/ai2-llm/olmo-medium/p067ktg9/step558223-unsharded"
)


def test_upstream_rows_parse() -> None:
    index = parse_index(UPSTREAM_ROWS, "OLMo-7B.csv")
    assert index.steps() == [0, 1000, 557000, 558223]
    assert index.find(557000).url.endswith("/p067ktg9/step557000-unsharded/")  # the later row wins
    # r2:// names the same bucket as the public address; every directory ends in "/"
    assert (
        index.latest().url
        == "https://olmo-checkpoints.org/ai2-llm/olmo-medium/p067ktg9/step558223-unsharded/"
    )


def test_a_missing_step_names_the_nearest_ones() -> None:
    text = "Step,Checkpoint Directory\n" + "".join(f"{s},https://h/step{s}/\n" for s in range(0, 20000, 1000))
    index = parse_index(text, "i.csv")
    with pytest.raises(UsageError) as info:
        index.find(4321)
    assert info.value.exit_code == 2
    assert info.value.details == ["nearest available steps: 2000, 3000, 4000, 5000, 6000, 7000"]
    assert index.nearest(-5, count=2) == [0, 1000]
    assert index.nearest(10**9, count=3) == [17000, 18000, 19000]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("step,dir\n1,https://h/\n", "first line"),
        ("", "first line"),
        ("Step,Checkpoint Directory\n", "lists no checkpoints"),
        ("Step,Checkpoint Directory\n1,https://h/,extra\n", "line 2"),
        ("Step,Checkpoint Directory\n\n1,not a url\n", "line 3"),
    ],
)
def test_bad_indexes_say_what_and_where(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_index(text, "bad.csv")


def test_relative_directories_resolve_against_an_index_url() -> None:
    index = parse_index(
        "Step,Checkpoint Directory\n5,ckpt/step5-unsharded\n", "http://127.0.0.1:9/m/index.csv"
    )
    assert index.find(5).url == "http://127.0.0.1:9/m/ckpt/step5-unsharded/"


def test_an_index_url_is_cached_and_read_offline(tmp_path: Path) -> None:
    from tests._http_server import serve

    with serve() as server:
        server.add_bytes("i.csv", b"Step,Checkpoint Directory\n10,https://h/step10-unsharded/")
        first = load_index(server.url("i.csv"), cache_dir=tmp_path)
        url = server.url("i.csv")
    again = load_index(url, cache_dir=tmp_path)  # the server is gone: cached-path's copy is used
    assert first.entries == again.entries and again.steps() == [10]


def test_a_local_index_file(tmp_path: Path, server: Server) -> None:
    path = tmp_path / "mirror.csv"
    path.write_text("Step,Checkpoint Directory\r\n3,https://h/a/\r\n")
    assert load_index(str(path)).steps() == [3]
    with pytest.raises(UsageError, match="does not exist"):
        load_index(str(tmp_path / "nope.csv"))


def test_models_map_to_upstream_index_files_and_presets() -> None:
    assert official_index_url("7b-0424").endswith("/checkpoints/official/OLMo-7B-0424.csv")
    assert set(MODELS) == {"1b", "7b", "7b-twin-2t", "7b-0424", "7b-0724"}
    with pytest.raises(UsageError) as info:
        check_model("tiny")
    assert "1b, 7b, 7b-twin-2t, 7b-0424, 7b-0724" in info.value.details[0]
    # tokens per step = the preset's batch (instances) x sequence length
    assert tokens_per_step("1b") == 2048 * 2048
    assert tokens_per_step("7b-0724") == 1024 * 4096


def test_the_model_of_a_config_comes_from_its_run_name(tmp_path: Path) -> None:
    for run_name, model in [("OLMo-7B-0424", "7b-0424"), ("olmo-1b", "1b"), ("my-run", None)]:
        (tmp_path / "config.yaml").write_text(f"run_name: {run_name}\nmodel: {{}}\n")
        assert model_for_config(tmp_path / "config.yaml") == model


def test_checksums_are_read_from_the_headers_servers_send() -> None:
    data = b"checkpoint bytes"
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    b64 = lambda digest: base64.b64encode(bytes.fromhex(digest)).decode()  # noqa: E731
    cases = [
        ({"x-checksum-sha256": sha}, {}, ("sha256", sha)),
        ({"x-amz-checksum-sha256": b64(sha)}, {}, ("sha256", sha)),
        ({"x-goog-hash": f"crc32c=AAAAAA==,md5={b64(md5)}"}, {}, ("md5", md5)),
        ({"Content-MD5": b64(md5)}, {}, ("md5", md5)),
        ({}, {"x-linked-etag": f'"{sha}"'}, ("sha256", sha)),  # Hugging Face, before its redirect
        ({"ETag": f'"{md5}"', "x-amz-request-id": "1"}, {}, ("md5", md5)),  # S3 single-part upload
        ({"ETag": f'"{md5}"', "Server": "cloudflare"}, {}, ("md5", md5)),  # R2
        ({"ETag": f'"{md5}-12"', "Server": "AmazonS3"}, {}, None),  # multipart: not a digest
        ({"ETag": f'"{md5}"', "Server": "nginx"}, {}, None),  # opaque elsewhere
        ({"x-checksum-sha256": "not-hex"}, {}, None),
    ]
    import requests.structures

    for headers, extra, want in cases:
        got = checksum_from_headers(requests.structures.CaseInsensitiveDict(headers), extra)
        assert (None if got is None else (got.algorithm, got.hexdigest)) == want, headers
