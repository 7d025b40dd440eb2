"""The checkpoint index (upstream's `Step,Checkpoint Directory` and OLMo 2 stage 2's
`Ingredient,Step,Checkpoint Directory` CSVs), model names, checksum headers."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from olmo_cli.commands.checkpoints import MODEL_NAMES
from olmo_cli.config.presets import preset_names
from olmo_cli.errors import ConfigError, UsageError
from olmo_cli.hub.checksum import checksum_from_headers
from olmo_cli.hub.index import (
    MODELS,
    PUBLISHED,
    IndexEntry,
    check_model,
    is_sharded_entry,
    load_index,
    model_for_config,
    official_index_url,
    parse_index,
    tokens_per_step,
)
from tests._http_server import Server

OLMO1 = ["1b", "7b", "7b-twin-2t", "7b-0424", "7b-0724"]
OLMO2 = ["olmo2-1b", "olmo2-7b", "olmo2-13b", "olmo2-32b"]

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
    olmo1 = "https://raw.githubusercontent.com/allenai/OLMo/206da7c76bd7b6871726d8942155c19da87cb2a4/"
    olmo2 = "https://raw.githubusercontent.com/allenai/OLMo/59a53e3f68e546330ca5a99ec626e58f9ab96494/configs/"
    core = (
        "https://raw.githubusercontent.com/allenai/OLMo-core/fa6c5014c9f6e9ee789da2d9c20d5126fee8df0d/"
        "src/scripts/official/OLMo2/"
    )
    assert official_index_url("7b-0424") == olmo1 + "checkpoints/official/OLMo-7B-0424.csv"
    assert official_index_url("7b-twin-2t") == olmo1 + "checkpoints/official/OLMo-7B-Twin-2T.csv"
    assert official_index_url("olmo2-1b") == olmo2 + "official-0425/OLMo-2-0425-1B.csv"
    assert official_index_url("olmo2-1b", 2) == olmo2 + "official-0425/OLMo-2-0425-1B-stage2.csv"
    assert official_index_url("olmo2-7b", 2) == olmo2 + "official-1124/OLMo-2-1124-7B-stage2.csv"
    assert official_index_url("olmo2-13b") == olmo2 + "official-1124/OLMo-2-1124-13B.csv"
    assert official_index_url("olmo2-32b", 2) == core + "OLMo-2-0325-32B-stage2.csv"
    assert [m.name for m in PUBLISHED] == list(MODELS) == list(MODEL_NAMES) == [*OLMO1, *OLMO2]
    assert {m.name: m.hf_repo for m in PUBLISHED if m.family == "OLMo 2"} == {
        "olmo2-1b": "allenai/OLMo-2-0425-1B",
        "olmo2-7b": "allenai/OLMo-2-1124-7B",
        "olmo2-13b": "allenai/OLMo-2-1124-13B",
        "olmo2-32b": "allenai/OLMo-2-0325-32B",
    }
    assert [m.name for m in PUBLISHED if m.sharded] == ["olmo2-32b"]
    assert all(m.stage2_index is None for m in PUBLISHED if m.family == "OLMo 1")
    with pytest.raises(UsageError, match="no published stage-2 checkpoints"):
        official_index_url("7b", 2)
    with pytest.raises(UsageError) as info:
        check_model("tiny")
    assert ", ".join([*OLMO1, *OLMO2]) in info.value.details[0]
    # every model is a preset; tokens per step = the preset's batch (instances) x sequence length
    assert set(MODELS) <= set(preset_names())
    assert {name: tokens_per_step(name) for name in MODELS} == {
        "1b": 2048 * 2048,
        "7b": 2048 * 2048,
        "7b-twin-2t": 2048 * 2048,
        "7b-0424": 1024 * 4096,
        "7b-0724": 1024 * 4096,
        "olmo2-1b": 512 * 4096,
        "olmo2-7b": 1024 * 4096,
        "olmo2-13b": 2048 * 4096,
        "olmo2-32b": 2048 * 4096,
    }


def test_the_model_of_a_config_comes_from_its_run_name(tmp_path: Path) -> None:
    for run_name, model in [
        ("OLMo-7B-0424", "7b-0424"),
        ("olmo-1b", "1b"),
        ("my-run", None),
        ("OLMo2-7B-stage1", "olmo2-7b"),  # the presets'
        ("OLMo2-1B-stage1", "olmo2-1b"),
        ("OLMo2-32B-stage1", "olmo2-32b"),
        ("OLMo-13B", "olmo2-13b"),  # upstream's OLMo 2 13B stage-1 config
        ("OLMo2-7B-stage2-seed42", "olmo2-7b"),  # upstream's stage-2 configs
        ("OLMo2-13B-stage2-seed1110-100B", "olmo2-13b"),
        ("OLMo2-1B-stage2-seed42", "olmo2-1b"),
        ("OLMo2-13Bx", None),
    ]:
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


# OLMo 2 stage 2's rows as upstream publishes them: steps shared by the ingredients, 32B's soup.
STAGE2 = (
    "Ingredient,Step,Checkpoint Directory\n"
    "1,1000,https://olmo-checkpoints.org/ai2-llm/peteish7/stage2/olmo-7b-1124_stage2_ingredient1/step1000-unsharded/\n"
    "1,11931,https://olmo-checkpoints.org/ai2-llm/peteish7/stage2/olmo-7b-1124_stage2_ingredient1/step11931-unsharded/\n"
    "2,1000,https://olmo-checkpoints.org/ai2-llm/peteish7/stage2/olmo-7b-1124_stage2_ingredient2/step1000-unsharded/\n"
    "2,11931,https://olmo-checkpoints.org/ai2-llm/peteish7/stage2/olmo-7b-1124_stage2_ingredient2/step11931-unsharded/\n"
    "3,2000,https://olmo-checkpoints.org/ai2-llm/peteish7/stage2/olmo-7b-1124_stage2_ingredient3/step2000-unsharded/\n"
    "soup,11921,https://olmo-checkpoints.org/ai2-llm/peteish32/stage2/soup/step11921-unsharded/"
)


def test_stage2_rows_parse_with_their_ingredients() -> None:
    index = parse_index(STAGE2, "OLMo-2-1124-7B-stage2.csv")
    assert index.has_ingredients and index.ingredients() == ["1", "2", "3", "soup"]
    assert index.steps() == [1000, 2000, 11921, 11931]
    assert index.steps("2") == [1000, 11931]
    found = index.find(11931, "2")
    assert (found.ingredient, found.step, found.line) == ("2", 11931, 5)
    assert found.url.endswith("/olmo-7b-1124_stage2_ingredient2/step11931-unsharded/")
    assert index.find(2000).ingredient == "3"  # one ingredient has it: no need to say which
    assert (
        index.find(11921).url
        == "https://olmo-checkpoints.org/ai2-llm/peteish32/stage2/soup/step11921-unsharded/"
    )
    assert index.latest("1").step == 11931 and index.latest("soup").ingredient == "soup"
    assert [e.ingredient for e in index.select("1").entries] == ["1", "1"]
    # stage-1 indexes have no ingredients
    assert parse_index(UPSTREAM_ROWS, "OLMo-7B.csv").find(1000).ingredient is None


def test_a_step_in_several_ingredients_needs_one() -> None:
    index = parse_index(STAGE2, "s2.csv")
    with pytest.raises(UsageError) as info:
        index.find(1000)
    assert "step 1000 is in 2 ingredients" in info.value.message
    assert info.value.details == ["ingredients with step 1000: 1, 2"] and "--ingredient" in (
        info.value.hint or ""
    )
    with pytest.raises(UsageError) as info:
        index.latest()
    assert info.value.details == [
        "ingredient 1: step 11931",
        "ingredient 2: step 11931",
        "ingredient 3: step 2000",
        "ingredient soup: step 11921",
    ]
    with pytest.raises(UsageError) as info:
        index.find(5000, "3")
    assert "(ingredient 3)" in info.value.message and info.value.details == ["nearest available steps: 2000"]
    with pytest.raises(UsageError) as info:
        index.select("7")
    assert info.value.details == ["ingredients there: 1, 2, 3, soup"]
    with pytest.raises(UsageError, match="has no ingredients"):
        parse_index(UPSTREAM_ROWS, "OLMo-7B.csv").select("1")


@pytest.mark.parametrize(
    "row, problem",
    [
        (",1000,https://h/x/", "ingredient ''"),
        ("a b,1000,https://h/x/", "ingredient 'a b'"),
        ("../x,1000,https://h/x/", "ingredient '../x'"),
        ("x" * 33 + ",1000,https://h/x/", "1 to 32 letters"),
        ("1,1000", "3 cells"),
        ("1,1000,https://h/x/,extra", "3 cells"),
        ("1,-5,https://h/x/", "non-negative integer step"),
        ("1,1000,not a url", "not a URL"),
    ],
)
def test_hostile_stage2_rows_say_what_and_where(row: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="line 3") as info:
        parse_index(f"Ingredient,Step,Checkpoint Directory\n1,5,https://h/a/\n{row}\n", "s2.csv")
    assert problem in info.value.message


def test_sharded_rows_are_told_apart() -> None:
    sharded = IndexEntry(721901, "https://olmo-checkpoints.org/ai2-llm/peteish32/step721901/", 2)
    soup = IndexEntry(
        11921, "https://olmo-checkpoints.org/ai2-llm/peteish32/stage2/soup/step11921-unsharded/", 3
    )
    assert is_sharded_entry("olmo2-32b", sharded) and not is_sharded_entry("olmo2-32b", soup)
    assert not is_sharded_entry("olmo2-7b", sharded) and not is_sharded_entry(None, sharded)
