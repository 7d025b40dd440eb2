"""OLMo 2's published checkpoints through `olmo checkpoints`: stage 2's ingredients (listed, picked,
downloaded side by side), 32B's OLMo-core sharded directories (refused), and the Hub's OLMo 2
revision names, against indexes and a fake Hub served on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

from tests._http_server import Server

from ._helpers import add_checkpoint, files_under, run_cli

PER_STEP = 1024 * 4096  # olmo2-7b's batch in tokens, stage 2 as stage 1


def stage2_index(server: Server, rows: list[tuple[str, int]]) -> str:
    """Serve an `Ingredient,Step,Checkpoint Directory` index whose rows point at `s2/ing{K}/`."""
    lines = [f"{k},{step},{server.url(f's2/ing{k}/step{step}-unsharded/')}" for k, step in rows]
    server.add_bytes("stage2.csv", ("Ingredient,Step,Checkpoint Directory\n" + "\n".join(lines)).encode())
    return server.url("stage2.csv")


def test_list_stage2_shows_the_ingredients_and_keeps_one(server: Server, tmp_path: Path) -> None:
    index = stage2_index(server, [("1", 1000), ("1", 2000), ("2", 1000), ("2", 3000), ("3", 1000)])
    base = ["list", "--model", "olmo2-7b", "--stage", "2", "--index", index]
    proc = run_cli(*base, "--ingredient", "2", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {
            "ingredient": "2",
            "step": s,
            "tokens": s * PER_STEP,
            "url": server.url(f"s2/ing2/step{s}-unsharded/"),
        }
        for s in (1000, 3000)
    ]
    proc = run_cli(*base, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Ingredient" in proc.stdout and "5 checkpoints" in proc.stdout
    proc = run_cli(*base, "--ingredient", "9", tmp=tmp_path)
    assert proc.returncode == 2 and "ingredients there: 1, 2, 3" in proc.stderr


def test_download_stage2_ingredients_land_side_by_side(server: Server, tmp_path: Path) -> None:
    index = stage2_index(server, [("1", 1000), ("2", 1000)])
    one = add_checkpoint(server, 1000, prefix="s2/ing1")
    two = add_checkpoint(
        server, 1000, {"config.yaml": b"x: 2\n", "model.safetensors": b"m2" * 999}, prefix="s2/ing2"
    )
    dest = tmp_path / "dest"
    base = ["download", "--model", "olmo2-7b", "--stage", "2", "--index", index, "-o", str(dest)]

    proc = run_cli(*base, "--step", "1000", tmp=tmp_path)
    assert proc.returncode == 2 and "ingredients with step 1000: 1, 2" in proc.stderr
    assert server.served(prefix="s2/") == 0

    for ingredient, files in (("1", one), ("2", two)):
        proc = run_cli(*base, "--ingredient", ingredient, "--step", "1000", "--json", tmp=tmp_path)
        assert proc.returncode == 0, proc.stderr
        directory = dest / f"stage2-ingredient{ingredient}-step1000-unsharded"
        assert json.loads(proc.stdout)["checkpoints"] == [
            {
                "step": 1000,
                "url": server.url(f"s2/ing{ingredient}/step1000-unsharded/"),
                "ingredient": ingredient,
                "path": str(directory),
            }
        ]
        got = files_under(directory)
        manifest = json.loads(got.pop(".olmo-download.json"))
        assert got == files and manifest["ingredient"] == ingredient and manifest["step"] == 1000
    assert sorted(p.name for p in dest.iterdir()) == [
        "stage2-ingredient1-step1000-unsharded",
        "stage2-ingredient2-step1000-unsharded",
    ]

    proc = run_cli(*base, "--ingredient", "2", "--latest", "--dry-run", "--json", tmp=tmp_path)
    plan = json.loads(proc.stdout)[0]
    assert (plan["ingredient"], plan["step"], plan["complete"], plan["to_fetch"]) == ("2", 1000, True, 0)


def test_ingredient_and_stage_errors_are_usage_errors(server: Server, tmp_path: Path) -> None:
    stage1 = server.url("stage1.csv")
    server.add_bytes(
        "stage1.csv", f"Step,Checkpoint Directory\n5,{server.url('a/step5-unsharded/')}\n".encode()
    )
    proc = run_cli("list", "--index", stage1, "--ingredient", "1", tmp=tmp_path)
    assert proc.returncode == 2 and "has no ingredients" in proc.stderr and "--stage 2" in proc.stderr
    proc = run_cli("list", "--model", "7b", "--stage", "2", tmp=tmp_path)  # fails before any network
    assert proc.returncode == 2 and "model 7b has no published stage-2 checkpoints" in proc.stderr
    proc = run_cli("list", "--model", "olmo2-7b", "--stage", "3", tmp=tmp_path)
    assert proc.returncode == 2


def test_olmo2_32b_sharded_directories_are_refused_with_a_way_out(server: Server, tmp_path: Path) -> None:
    server.add_bytes("core/step721901/.metadata", b"\x80\x04pickle")
    server.add_bytes("core/step721901/__0_0.distcp", b"x" * 100)
    rows = f"Step,Checkpoint Directory\n721901,{server.url('core/step721901/')}\n"
    server.add_bytes("32b.csv", rows.encode())
    base = ["--model", "olmo2-32b", "--index", server.url("32b.csv")]
    listed = run_cli("list", *base, "--json", tmp=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["tokens"] == 721901 * 2048 * 4096
    proc = run_cli("download", *base, "--latest", "-o", str(tmp_path / "d"), tmp=tmp_path)
    assert proc.returncode == 2
    assert "OLMo-core's sharded format" in proc.stderr and "--source hf" in proc.stderr
    assert "never unpickles" in proc.stderr
    assert not server.seen("core/step721901/.metadata") and not (tmp_path / "d").exists()


def test_olmo2_revision_names_are_parsed_and_filtered(server: Server, tmp_path: Path) -> None:
    names = [
        "main",
        "stage2-ingredient2-step11931-tokens50B",
        "stage1-step928646-tokens3896B",
        "stage2-ingredient1-step11931-tokens50B",
        "stage1-step1000-tokens5B",
        "stage2-ingredient1-step1000-tokens5B",
    ]
    refs = {"branches": [{"name": n, "targetCommit": f"{i:040x}"} for i, n in enumerate(names)], "tags": []}
    server.add_bytes("api/models/allenai/OLMo-2-1124-7B/refs", json.dumps(refs).encode())
    env = {"HF_ENDPOINT": server.base_url}

    def listed(*args: str) -> list[dict[str, object]]:
        proc = run_cli("list", "-m", "olmo2-7b", "--source", "hf", "--json", *args, tmp=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    everything = listed()
    assert [(r["revision"], r["stage"], r["ingredient"], r["step"], r["tokens"]) for r in everything] == [
        ("stage1-step1000-tokens5B", 1, None, 1000, 5 * 10**9),
        ("stage1-step928646-tokens3896B", 1, None, 928646, 3896 * 10**9),
        ("stage2-ingredient1-step1000-tokens5B", 2, "1", 1000, 5 * 10**9),
        ("stage2-ingredient1-step11931-tokens50B", 2, "1", 11931, 50 * 10**9),
        ("stage2-ingredient2-step11931-tokens50B", 2, "2", 11931, 50 * 10**9),
        ("main", None, None, None, None),
    ]
    assert [r["revision"] for r in listed("--stage", "1")] == [
        "stage1-step1000-tokens5B",
        "stage1-step928646-tokens3896B",
    ]
    assert [r["revision"] for r in listed("--stage", "2", "--ingredient", "1")] == [
        "stage2-ingredient1-step1000-tokens5B",
        "stage2-ingredient1-step11931-tokens50B",
    ]
    proc = run_cli("list", "-m", "olmo2-7b", "--source", "hf", "--stage", "2", tmp=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stage2-ingredient2-step11931-tokens50B" in proc.stdout and "Ingredient" in proc.stdout
    proc = run_cli("list", "-m", "olmo2-7b", "--source", "hf", "--ingredient", "4", tmp=tmp_path, env=env)
    assert proc.returncode == 2 and "ingredients there: 1, 2" in proc.stderr
