"""`olmo soup` (issue 16 point 5): the soup of copies is the copy bit for bit; the weighted soup of two
random models equals the average computed here in float64 from the models themselves (one of them read
from a Hugging Face export, so the whole-read path is covered too); mismatched architectures, tokenizers
and weights are refused by name; a damaged ingredient is a clear error; and memory stays near one
tensor per ingredient, not one model per ingredient (peak RSS of a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from olmo_cli.convert.export import export_hf
from olmo_cli.load.build import load_tokenizer
from olmo_cli.load.read import read_checkpoint
from olmo_cli.load.soup import SOUP_FILE
from tests._fixtures import tiny_config, write_checkpoint
from tests.cli._helpers import clean_env, run_olmo_here

SMALL = ("model.d_model=64", "model.n_layers=2", "model.weight_tying=false")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    cfg = tiny_config(*SMALL)
    a, model_a = write_checkpoint(root / "a", cfg, seed=1)
    b, model_b = write_checkpoint(root / "b", cfg, seed=2)
    return root, cfg, (a, model_a), (b, model_b)


def _state(path):
    return read_checkpoint(path).state


def test_the_soup_of_copies_is_the_copy_bit_for_bit(models, tmp_path):
    _, _, (a, model_a), _ = models
    out = run_olmo_here("soup", str(a), str(a), str(a), "--output", str(tmp_path / "soup"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [row["share"] for row in summary["ingredients"]] == pytest.approx([1 / 3] * 3)
    soup = _state(tmp_path / "soup")
    original = model_a.state_dict()
    assert list(soup) == list(original)
    for name, value in original.items():
        assert torch.equal(soup[name], value), name
    recipe = json.loads((tmp_path / "soup" / SOUP_FILE).read_text())
    assert recipe["format"] == "olmo-soup/1" and [i["path"] for i in recipe["ingredients"]] == [str(a)] * 3


def test_a_weighted_soup_equals_the_average_computed_independently(models, tmp_path):
    _, cfg, (a, model_a), (b, model_b) = models
    found = read_checkpoint(b)
    export_hf(found, load_tokenizer(found), tmp_path / "b-hf")  # the second ingredient as a HF directory
    out = run_olmo_here(
        "soup", str(a), str(tmp_path / "b-hf"), "--weights", "3,1", "-o", str(tmp_path / "soup"), "--json"
    )
    assert out.returncode == 0, out.stderr
    assert [(row["kind"], row["share"]) for row in json.loads(out.stdout)["ingredients"]] == [
        ("unsharded", 0.75),
        ("hf", 0.25),
    ]
    soup = _state(tmp_path / "soup")
    for name, value in model_a.state_dict().items():
        expected = ((3 * value.double() + model_b.state_dict()[name].double()) / 4).float()
        assert torch.equal(soup[name], expected), name
    assert not (tmp_path / "soup.soup-tmp").exists()
    # the soup is a checkpoint the other commands take
    text = run_olmo_here("generate", str(tmp_path / "soup"), "-p", "hello", "--max-new-tokens", "3")
    assert text.returncode == 0, text.stderr


def test_mismatched_architectures_and_tokenizers_are_refused_by_name(models, tmp_path):
    root, _, (a, _), _ = models
    other, _ = write_checkpoint(root / "deeper", tiny_config(*SMALL, "model.n_layers=3"))
    out = run_olmo_here("soup", str(a), str(other), "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and "n_layers: 2 vs 3" in out.stderr, out.stderr
    vocab = tmp_path / "tok.json"
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models

    Tokenizer(tok_models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(vocab))
    retokenized, _ = write_checkpoint(root / "retok", tiny_config(*SMALL, f"tokenizer.identifier={vocab}"))
    out = run_olmo_here("soup", str(a), str(retokenized), "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and "another tokenizer" in out.stderr, out.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "1,2,3"], "3 weights for 2 checkpoints"),
        (["--weights", "1,-1"], "non-negative"),
        (["--weights", "0,0"], "not all 0"),
        (["--weights", "a,b"], "comma-separated"),
    ],
)
def test_bad_weights_are_usage_errors(models, tmp_path, args, message):
    _, _, (a, _), (b, _) = models
    out = run_olmo_here("soup", str(a), str(b), "-o", str(tmp_path / "x"), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_a_damaged_ingredient_is_a_clear_error_and_leaves_nothing(models, tmp_path):
    import shutil
    import struct

    _, _, (a, _), (b, _) = models
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    model = broken / "model.safetensors"
    raw = model.read_bytes()
    model.write_bytes(raw[: len(raw) // 2])  # truncated mid-tensor
    out = run_olmo_here("soup", str(a), str(broken), "-o", str(tmp_path / "x"))
    assert out.returncode in (2, 3, 4, 5) and "Traceback" not in out.stderr, out.stderr
    assert "broken" in out.stderr
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10**12]  # an entry pointing far past the end of the file
    text = json.dumps(header).encode()
    model.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    out = run_olmo_here("soup", str(a), str(broken), "-o", str(tmp_path / "x"))
    assert out.returncode in (2, 3, 4, 5) and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.soup-tmp").exists()


# VmHWM, the process's own peak resident set (getrusage's ru_maxrss would include the parent's, which
# survives fork and exec on Linux).
_PEAK = (
    "import sys\n"
    "from olmo_cli.app import main\n"
    "sys.argv = ['olmo', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "    print('PEAK', int(hwm) * 1024, file=sys.stderr)\n"
)


def _peak_rss(*args: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, env=clean_env(), timeout=300
    )
    assert "PEAK" in proc.stderr, proc.stderr
    return int(proc.stderr.rsplit("PEAK", 1)[1].split()[0])


_WRITE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from tests._fixtures import tiny_config, write_checkpoint\n"
    "root, d, layers = Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
    "cfg = tiny_config(f'model.d_model={d}', f'model.n_layers={layers}', 'model.weight_tying=false')\n"
    "for i in range(3):\n"
    "    print(write_checkpoint(root / f'{sys.argv[4]}{i}', cfg, seed=i)[0])\n"
)


def _checkpoints(root, prefix: str, d_model: int, layers: int) -> list[str]:
    from tests.cli._helpers import ROOT

    args = [sys.executable, "-c", _WRITE, str(root), str(d_model), str(layers), prefix]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_memory_holds_tensors_not_models(tmp_path):
    # 3 ingredients of ~270 MB each: reading them whole would take 3 x 270 MB (twice that in float64).
    # Streaming takes a few copies of the largest tensor (the 4096 x 512 embedding) on top of what the
    # same command needs for 3 tiny ingredients (Python, torch and the imports: the baseline).
    # Written by a child process: building three such models here would leave this process (whose
    # resident size every later child's getrusage peak inherits on Linux) a gigabyte larger.
    paths, small = _checkpoints(tmp_path, "m", 512, 24), _checkpoints(tmp_path, "t", 64, 1)
    one_copy = (tmp_path / "m0" / "step0-unsharded" / "model.safetensors").stat().st_size
    assert one_copy > 250e6
    baseline = _peak_rss("soup", *small, "-o", str(tmp_path / "small-soup"), "--json")
    peak = _peak_rss("soup", *paths, "-o", str(tmp_path / "soup"), "--json")
    assert abs((tmp_path / "soup" / "model.safetensors").stat().st_size - one_copy) < 1e6
    print(
        f"soup of 3 x {one_copy / 1e6:.0f} MB: peak RSS {peak / 1e6:.0f} MB, baseline {baseline / 1e6:.0f} MB"
    )
    assert peak - baseline < 0.5 * one_copy
