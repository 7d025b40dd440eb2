"""`olmo inspect-batch` end to end, through its `main` in this process (the text panels through the
installed `olmo`, as a user runs it), against the order and instances computed independently from
docs/format.md §5 (plain numpy in this file)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from _token_data import expected_instances, random_tokens, write_token_dir, write_tokens

from tests._http_server import serve
from tests.cli._helpers import run_olmo, run_olmo_here

SEQ_LEN, BATCH, SEED = 8, 6, 1234
LENGTHS = (100, 75, 41, 64)  # remainders 4, 3, 1, 0: 12 + 9 + 5 + 8 = 34 instances


def upstream_order(n: int, seed: int, epoch: int, world_size: int = 1, drop_last: bool = False) -> np.ndarray:
    indices = np.arange(n, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed + epoch)).shuffle(indices)
    total = world_size * (n // world_size if drop_last else math.ceil(n / world_size))
    return np.resize(indices, total)  # np.resize repeats the head: upstream's padding


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(7)
    arrays = [random_tokens(rng, n, high=4096) for n in LENGTHS]
    paths = [str(write_tokens(tmp_path / "data" / f"part-{i}.npy", a)) for i, a in enumerate(arrays)]
    config = {
        "seed": SEED,
        "model": {
            "d_model": 16,
            "n_heads": 2,
            "n_layers": 1,
            "max_sequence_length": SEQ_LEN,
            "vocab_size": 4096,
            "embedding_size": 4096,
        },
        "tokenizer": {"identifier": "builtin:tiny-bpe-4096"},
        "global_train_batch_size": BATCH,
        "data": {"paths": paths},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_olmo_here("inspect-batch", *args, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))

    def run_json(*args: str) -> dict:
        proc = run(*args, "--format", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    instances = expected_instances(arrays, SEQ_LEN)
    return run, run_json, instances, paths


def _check(got: list[dict], want_indices: list[int], instances: list[np.ndarray]) -> None:
    assert [item["index"] for item in got] == want_indices
    for item in got:
        assert item["input_ids"] == instances[item["index"]].tolist()


def test_whole_batches_and_epochs(setup):
    run, run_json, instances, paths = setup
    order = upstream_order(34, SEED, 0)
    out = run_json("0", "-c", "cfg.yaml")
    assert (out["instances_in_data"], out["batches_in_epoch"], out["batch_size"], out["seq_len"]) == (
        34,
        5,
        BATCH,
        8,
    )
    (batch,) = out["batches"]
    _check(batch["instances"], order[:BATCH].tolist(), instances)
    assert [item["position"] for item in batch["instances"]] == list(range(BATCH))
    first = batch["instances"][0]
    boundaries = np.cumsum([0] + [n // SEQ_LEN for n in LENGTHS])
    file_index = int(np.searchsorted(boundaries, first["index"], side="right") - 1)
    assert first["path"] == paths[file_index] and first["file_index"] == file_index
    assert first["token_offset"] == (first["index"] - boundaries[file_index]) * SEQ_LEN
    epoch2 = run_json("4", "-c", "cfg.yaml", "--epoch", "2")
    _check(epoch2["batches"][0]["instances"], upstream_order(34, SEED, 2)[24:30].tolist(), instances)
    # data.seed takes precedence over seed
    reseeded = run_json("1", "-c", "cfg.yaml", "--set", "data.seed=99")
    _check(reseeded["batches"][0]["instances"], upstream_order(34, 99, 0)[6:12].tolist(), instances)


def test_ranges_ranks_and_instances(setup):
    run, run_json, instances, _ = setup
    world = 3
    order = upstream_order(34, SEED, 0, world_size=world)  # padded to 36: six whole batches
    out = run_json("4..5", "-c", "cfg.yaml", "--rank", "1", "--world-size", str(world))
    assert out["batches_in_epoch"] == 6 and [b["batch"] for b in out["batches"]] == [4, 5]
    for b in out["batches"]:
        # docs/format.md §5.3: rank r iterates order[r::W] in device batches of B/W.
        device = order[1::world][b["batch"] * 2 : b["batch"] * 2 + 2]
        _check(b["instances"], device.tolist(), instances)
        assert [i["position"] for i in b["instances"]] == [1, 4]
    one = run_json("2", "-c", "cfg.yaml", "--instance", "5")
    _check(one["batches"][0]["instances"], [int(upstream_order(34, SEED, 0)[17])], instances)
    both = run_json("2", "-c", "cfg.yaml", "-r", "2", "-w", "3", "-i", "1")
    _check(both["batches"][0]["instances"], [int(order[12 + 2 + 3])], instances)
    # ids: one tab-separated line per instance
    proc = run("0..1", "-c", "cfg.yaml", "--format", "ids")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [int(parts[2]) for parts in lines] == upstream_order(34, SEED, 0)[:12].tolist()
    assert all(list(map(int, p[5].split())) == instances[int(p[2])].tolist() for p in lines)


def test_drop_last_shortens_the_epoch(setup):
    run, run_json, _, _ = setup
    out = run_json("0", "-c", "cfg.yaml", "--set", "data.drop_last=true", "-w", "3")
    assert out["batches_in_epoch"] == 5  # 33 of 34 instances kept: five whole batches of six
    proc = run("5", "-c", "cfg.yaml", "--set", "data.drop_last=true", "-w", "3")
    assert proc.returncode == 2
    assert "it has 5 batches (0..4)" in proc.stderr


def test_data_override_and_order_files(setup, tmp_path):
    run, run_json, _, _ = setup
    rng = np.random.default_rng(3)
    parts = [random_tokens(rng, 40, high=4096), random_tokens(rng, 30, high=4096)]
    write_token_dir(tmp_path / "tok", parts)
    tok_instances = expected_instances(parts, SEQ_LEN)
    out = run_json("0", "-c", "cfg.yaml", "--data", "tok")
    assert (out["instances_in_data"], out["batches_in_epoch"]) == (5 + 3, 1)
    _check(out["batches"][0]["instances"], upstream_order(8, SEED, 0)[:6].tolist(), tok_instances)
    assert out["batches"][0]["instances"][0]["path"].startswith("tok/part-")  # as given, relative
    custom = np.arange(8, dtype="<u4")[::-1].copy()
    custom.tofile(tmp_path / "order.npy")
    local = run_json("0", "-c", "cfg.yaml", "--data", "tok", "--data-order-file", "order.npy")
    _check(local["batches"][0]["instances"], [7, 6, 5, 4, 3, 2], tok_instances)
    with serve() as server:
        server.files["order.npy"] = custom.tobytes()
        remote = run_json("0", "-c", "cfg.yaml", "-d", "tok", "--data-order-file", server.url("order.npy"))
        assert remote["batches"][0]["instances"] == local["batches"][0]["instances"]
        assert "order file http://" in remote["order"]
        assert server.served("order.npy") == BATCH * 4  # one batch's worth of the order
        # Token files over HTTP: the same instances, and only the shown ones are fetched.
        for i, tokens in enumerate(parts):
            server.files[f"part-{i}.npy"] = tokens.astype("<u2").tobytes()
        urls = [arg for i in range(2) for arg in ("-d", server.url(f"part-{i}.npy"))]
        one = run_json("0", "-c", "cfg.yaml", *urls, "--instance", "3")
        _check(one["batches"][0]["instances"], [int(upstream_order(8, SEED, 0)[3])], tok_instances)
        fetched = server.served("part-0.npy") + server.served("part-1.npy")
        assert fetched == SEQ_LEN * 2  # one instance of uint16 tokens


def test_run_directory_uses_its_config_and_order(setup, tmp_path):
    run, run_json, instances, _ = setup
    run_dir = tmp_path / "run"
    (run_dir / "step20").mkdir(parents=True)
    (run_dir / "train_data").mkdir()
    shutil.copy(tmp_path / "cfg.yaml", run_dir / "config.yaml")
    shutil.copy(tmp_path / "cfg.yaml", run_dir / "step20" / "config.yaml")
    written = np.roll(np.arange(34, dtype="<u4"), 5)
    written.tofile(run_dir / "train_data" / "global_indices.npy")
    for directory in ("run", "run/step20"):
        out = run_json("1", "--run", directory)
        assert out["order"].endswith("train_data/global_indices.npy")
        _check(out["batches"][0]["instances"], written[6:12].tolist(), instances)
    # --epoch asks for another epoch than the one the run wrote down: computed instead
    other = run_json("1", "--run", "run", "--epoch", "1")
    _check(other["batches"][0]["instances"], upstream_order(34, SEED, 1)[6:12].tolist(), instances)
    proc = run("0", "--run", "data")
    assert proc.returncode == 2 and "has no config.yaml" in proc.stderr


def test_errors(setup):
    run, _, _, _ = setup
    proc = run("5", "-c", "cfg.yaml")
    assert proc.returncode == 2
    assert "batch 5 is beyond this epoch: it has 5 batches (0..4)" in proc.stderr
    proc = run("3..9", "-c", "cfg.yaml", "--format", "ids")
    assert proc.returncode == 2 and proc.stdout == ""  # nothing shown before the range is checked
    proc = run("0", "-c", "cfg.yaml", "--data", "missing/*.npy")
    assert proc.returncode == 3 and "no files match missing/*.npy" in proc.stderr
    proc = run("0", "-c", "cfg.yaml", "--set", "data.paths=[gone.npy]")
    assert proc.returncode == 3 and "gone.npy" in proc.stderr
    proc = run("0", "-c", "cfg.yaml", "-r", "0", "-w", "4")
    assert proc.returncode == 2 and "not divisible by the world size 4" in proc.stderr
    proc = run("0", "-c", "cfg.yaml", "-i", "6")
    assert proc.returncode == 2 and "positions 0..5" in proc.stderr
    proc = run("0", "-c", "cfg.yaml", "--tokenizer", "no-such-tokenizer.json")
    assert proc.returncode != 0 and "--format ids" in proc.stderr
    proc = run("x", "-c", "cfg.yaml")
    assert proc.returncode == 2 and "not a batch number or range" in proc.stderr


def test_text_shows_a_panel_per_instance(setup, tmp_path):
    _, run_json, _, paths = setup
    from olmo_cli.data.tokenizer import resolve_tokenizer

    args = ("inspect-batch", "0", "-c", "cfg.yaml", "-r", "0", "-w", "2")
    proc = run_olmo(*args, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    assert proc.returncode == 0, proc.stderr
    items = run_json("0", "-c", "cfg.yaml", "-r", "0", "-w", "2")["batches"][0]["instances"]
    tok = resolve_tokenizer("builtin:tiny-bpe-4096")
    panels = "".join(
        line.strip().strip("│") for line in proc.stdout.splitlines() if line.strip().startswith("│")
    )
    for item in items:
        assert f"batch 0 · position {item['position']} · instance {item['index']}" in proc.stdout
        assert f"{item['path']} @ token {item['token_offset']}" in proc.stdout
        text = tok.decode(item["input_ids"], skip_special_tokens=False)
        assert "".join(text.split()) in "".join(panels.split())
