"""A quantized model against the fp32 model it came from, and the quantized checkpoint on disk: round trip
through `load_model` and generation, deterministic bytes, and clear errors for records that lie.

Stated tolerances (logits, relative L2 error over a batch, fp32 model as reference):
- against an fp32 model holding the *dequantized* weights: <= 1% (only bf16 activations differ);
- against the original fp32 model, random init (the preset's mitchell init): int8 <= 5%; int4 (group
  128) <= 45%. Random Gaussian weights are the hard case for int4
  (each weight off by ~10% of its spread, and untrained logits are small); on the trained tiny model the
  same measure is 0.6% (int8) and 7.7% (int4), see the quantize notes.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from olmo_cli.errors import CheckpointError
from olmo_cli.load.build import load_model, load_tokenizer, require_full_precision
from olmo_cli.load.read import read_checkpoint
from olmo_cli.model.generate import GenerationSettings, generate_ids
from olmo_cli.model.olmo import build_model
from olmo_cli.quant.checkpoint import write_quantized
from olmo_cli.quant.model import quantize_state
from olmo_cli.quant.modules import QuantEmbedding, QuantLinear
from olmo_cli.quant.pack import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from olmo_cli.quant.settings import METADATA_KEY, SETTINGS_FILE, WEIGHTS_FILE, QuantLayout, QuantSettings
from tests._fixtures import write_checkpoint

from ._helpers import quant_config, quantized, token_ids

INT8 = QuantSettings("int8")
INT4 = QuantSettings("int4", 128)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def _dequantized_copy(model, settings):
    """An fp32 OLMo whose quantizable weights are replaced by their dequantized values."""
    state = dict(model.state_dict())
    for name, value in state.items():
        if name.endswith(".weight") and value.ndim == 2:
            if settings.method == "int8":
                state[name] = dequantize_int8(quantize_int8(value))
            else:
                state[name] = dequantize_int4(quantize_int4(value, settings.group_size))
    copy = build_model(model.config, device="meta")
    copy.load_state_dict(state, assign=True)
    return copy.eval()


@pytest.fixture(scope="module")
def fp32_model():
    return build_model(quant_config().model, seed=0).eval()


@pytest.mark.parametrize("settings", [INT8, INT4], ids=["int8", "int4"])
def test_logits_equal_the_dequantized_fp32_model(fp32_model, settings):
    qmodel, _, _ = quantized(fp32_model, settings)
    ids = token_ids(fp32_model.config.padded_vocab_size)
    with torch.no_grad():
        assert _rel(qmodel(ids), _dequantized_copy(fp32_model, settings)(ids)) <= 0.01


@pytest.mark.parametrize(("settings", "tolerance"), [(INT8, 0.05), (INT4, 0.45)])
def test_logits_within_tolerance_of_the_fp32_model(fp32_model, settings, tolerance):
    qmodel, _, layout = quantized(fp32_model, settings)
    assert isinstance(qmodel.transformer["wte"], QuantEmbedding)
    assert isinstance(qmodel.transformer["ff_out"], QuantLinear)  # the tied output reads the int table
    assert set(layout.modules.values()) == {settings.method}
    ids = token_ids(fp32_model.config.padded_vocab_size)
    with torch.no_grad():
        ref, out = fp32_model(ids), qmodel(ids)
    assert _rel(out, ref) <= tolerance


def test_untied_model_without_embedding_quantization():
    model = build_model(quant_config("model.weight_tying=false").model, seed=1).eval()
    qmodel, tensors, layout = quantized(model, QuantSettings("int8", embeddings=False))
    assert "transformer.wte" not in layout.modules and "transformer.wte.weight" in tensors
    assert isinstance(qmodel.transformer["ff_out"], QuantLinear)
    ids = token_ids(model.config.padded_vocab_size)
    with torch.no_grad():
        assert _rel(qmodel(ids), model(ids)) <= 0.05


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path, _ = write_checkpoint(tmp_path_factory.mktemp("src"), quant_config(), seed=2)
    return path


def _write(source, output, settings):
    found = read_checkpoint(source)
    tensors, modules = quantize_state(found.state, found.config.model, settings)
    layout = QuantLayout(settings, modules, source=str(source))
    text = (source / "config.yaml").read_text()
    tokenizer = load_tokenizer(found).json_text
    return write_quantized(
        output, tensors=tensors, layout=layout, config_yaml_text=text, tokenizer_json=tokenizer
    )


@pytest.mark.parametrize("settings", [INT8, INT4], ids=["int8", "int4"])
def test_round_trip_through_load_model_and_generate(source, tmp_path, settings):
    path = _write(source, tmp_path / "q", settings)
    found = read_checkpoint(path)
    assert found.kind == "quantized" and found.quantization is not None
    assert found.quantization.settings == settings
    model = load_model(found)
    assert next(model.parameters()).dtype == torch.float32  # what code asking for the dtype/device reads
    in_memory, _, _ = quantized(load_model(read_checkpoint(source)), settings)
    ids = token_ids(model.config.padded_vocab_size)
    with torch.no_grad():
        assert torch.equal(model(ids), in_memory(ids))
    prompt = [[5, 17, 300, 9]]
    greedy = GenerationSettings(max_new_tokens=8, eos_token_id=None)
    assert (
        generate_ids(model, prompt, greedy)[0].token_ids
        == generate_ids(in_memory, prompt, greedy)[0].token_ids
    )
    assert load_tokenizer(found).identity.vocab_size == 4096  # tokenizer.json travels with it


def test_quantizing_twice_writes_identical_bytes(source, tmp_path):
    a, b = _write(source, tmp_path / "a", INT4), _write(source, tmp_path / "b", INT4)
    for name in (WEIGHTS_FILE, SETTINGS_FILE, "config.yaml", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture
def written(source, tmp_path):
    return _write(source, tmp_path / "q", INT8)


def _edit_record(path, **changes):
    record = json.loads((path / SETTINGS_FILE).read_text())
    record.update(changes)
    (path / SETTINGS_FILE).write_text(json.dumps(record))
    return record


def test_record_claiming_another_method_is_a_clear_error(written):
    record = json.loads((written / SETTINGS_FILE).read_text())
    _edit_record(written, method="int4", group_size=128, modules={m: "int4" for m in record["modules"]})
    with pytest.raises(
        CheckpointError,
        match="says method = 'int4', but quantized.safetensors was written with method = 'int8'",
    ) as e:
        read_checkpoint(written)
    assert e.value.exit_code == 4


def test_tensors_that_do_not_fit_the_method_are_named(written):
    record = _edit_record(written, method="int4", group_size=128)
    record["modules"] = {m: "int4" for m in record["modules"]}
    (written / SETTINGS_FILE).write_text(json.dumps(record))
    # A weights file whose header agrees with the record, but whose tensors are still int8.
    tensors = load_file(str(written / WEIGHTS_FILE))
    save_file(tensors, str(written / WEIGHTS_FILE), metadata={METADATA_KEY: json.dumps(record)})
    with pytest.raises(CheckpointError, match="does not match its quantization record") as e:
        read_checkpoint(written)
    assert any("is int8 [" in line and "int4 needs uint8" in line for line in e.value.details)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "int3"}, "unknown quantization method 'int3'"),
        ({"format_version": 99}, "format version 99"),
        ({"format": "gptq"}, "not an olmo quantization record"),
    ],
)
def test_unknown_records_are_refused(written, changes, message):
    _edit_record(written, **changes)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(written)


def test_training_commands_refuse_a_quantized_checkpoint(written):
    with pytest.raises(CheckpointError, match="quantized checkpoint") as e:
        require_full_precision(read_checkpoint(written), "olmo finetune")
    assert "olmo finetune" in e.value.message and "source" in (e.value.hint or "")
