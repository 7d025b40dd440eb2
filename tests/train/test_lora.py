"""LoRA: adapters that start as the identity, train alone (every base weight stays bit-identical), travel
in a small safetensors file with their settings, resume, and merge into weights whose logits equal the
adapted model's."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from olmo_cli.checkpoint.layout import ADAPTER_FILE
from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import LoRAConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.load.adapter import merge_adapter, read_adapter_base
from olmo_cli.load.build import load_model
from olmo_cli.load.read import read_checkpoint
from olmo_cli.model.lora import (
    Adapter,
    LoRALinear,
    adapters_detached,
    apply_lora,
    base_fingerprint,
    is_adapter_name,
    merge_into,
    parameter_counts,
    read_adapter,
    write_adapter,
)
from olmo_cli.model.olmo import build_model
from tests._fixtures import preset
from tests.train._finetune_data import (
    base_checkpoint,
    base_config,
    chat_data,
    finetune_config,
    logits_of,
    losses,
    quiet,
)

ALL = LoRAConfig(rank=4, alpha=8.0, dropout=0.0)


def _ids(cfg, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.max_sequence_length), generator=gen)


def _adapted(seed=3, settings=ALL):
    cfg = base_config()
    model = build_model(cfg.model, seed=1)
    apply_lora(model, settings, generator=torch.Generator().manual_seed(seed))
    return cfg, model


def test_an_adapted_model_starts_as_its_base_and_only_the_adapters_train():
    cfg = base_config()
    base = build_model(cfg.model, seed=1)
    ids = _ids(cfg)
    expected = logits_of(base, ids)
    names_before = set(base.state_dict())
    adapted = apply_lora(base, LoRAConfig(rank=4, targets=["att_proj", "ff_out"]))
    assert adapted == [f"transformer.blocks.{i}.{t}" for i in range(2) for t in ("att_proj", "ff_out")]
    assert isinstance(base.transformer["blocks"][0].att_proj, LoRALinear)
    assert torch.equal(logits_of(base, ids), expected)  # B starts at zero
    names = set(base.state_dict())
    assert names_before <= names  # base names unchanged: base checkpoints load as they are
    assert all(is_adapter_name(n) for n in names - names_before)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable == names - names_before and len(trainable) == 8
    with adapters_detached(base):
        assert set(base.state_dict()) == names_before
    assert set(base.state_dict()) == names


def test_merged_logits_equal_base_plus_adapter_logits():
    cfg, model = _adapted()
    with torch.no_grad():  # a trained-looking adapter: B no longer zero
        for name, param in model.named_parameters():
            if name.endswith("lora_B.weight"):
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    ids = _ids(cfg)
    adapted = logits_of(model, ids)
    state = {k: v for k, v in model.state_dict().items()}
    base = {k: v for k, v in state.items() if not is_adapter_name(k)}
    adapter = Adapter({k: v for k, v in state.items() if is_adapter_name(k)}, ALL)
    merged_model = build_model(cfg.model, "meta")
    merged_model.load_state_dict(merge_into(base, adapter), assign=True)
    merged = logits_of(merged_model, ids)
    assert (adapted - logits_of(build_model(cfg.model, seed=1), ids)).abs().max() > 1e-2  # it changed
    assert (merged - adapted).abs().max().item() <= 1e-5
    # In float64 the two computations agree to its rounding: the merge formula itself is exact.
    state64 = {k: v.double() for k, v in state.items()}
    adapter64 = Adapter({k: v for k, v in state64.items() if is_adapter_name(k)}, ALL)
    model.double().load_state_dict(state64)
    merged_model.double().load_state_dict(
        merge_into({k: v for k, v in state64.items() if k in base}, adapter64)
    )
    assert (logits_of(merged_model, ids) - logits_of(model, ids)).abs().max().item() < 1e-10


@pytest.mark.parametrize("name", ["tiny", "1b"])
def test_rank_8_on_every_target_trains_well_under_5_percent(name):
    model = build_model(preset(name).model, "meta")
    apply_lora(model, LoRAConfig(rank=8))
    trainable, total = parameter_counts(model)
    assert 0 < trainable / total < 0.05
    if name == "1b":  # 16 blocks x 8 x (2048 + 6144 + 2048 + 2048 + 2048 + 16384 + 8192 + 2048)
        assert trainable == 16 * 8 * (2048 + 6144 + 2048 + 2048 + 2048 + 16384 + 8192 + 2048)


def test_the_adapter_file_round_trips_with_its_settings(tmp_path):
    _, model = _adapted()
    tensors = {k: v for k, v in model.state_dict().items() if is_adapter_name(k)}
    path = write_adapter(tmp_path / ADAPTER_FILE, Adapter(tensors, ALL, "/base", "abc", {"step": "5"}))
    back = read_adapter(path)
    assert back.settings == ALL and (back.base, back.base_fingerprint, back.extra) == (
        "/base",
        "abc",
        {"step": "5"},
    )
    assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items())
    assert path.stat().st_size < 100_000
    save_file({"transformer.wte.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an olmo LoRA adapter"):
        read_adapter(tmp_path / "other.safetensors")


def test_the_fingerprint_tells_bases_apart():
    a = build_model(base_config().model, seed=1).state_dict()
    b = build_model(base_config().model, seed=2).state_dict()
    assert base_fingerprint(a.items()) == base_fingerprint({k: v.clone() for k, v in a.items()}.items())
    assert base_fingerprint(a.items()) != base_fingerprint(b.items())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base, data = base_checkpoint(root / "base"), chat_data(root / "chat", conversations=400)
    sets = ("max_duration=6", "save_interval=3", "optimizer.learning_rate=1e-2", "global_train_batch_size=8")
    cfg = finetune_config(base, data, root / "run", *sets, lora={"rank": 4, "alpha": 8.0, "dropout": 0.0})
    result = quiet(cfg)
    return base, data, cfg, result, sets


def test_a_lora_run_keeps_every_base_weight_and_writes_its_adapter(lora_run):
    base, _, cfg, result, _ = lora_run
    start = read_unsharded(base).model
    final = read_unsharded(result.checkpoint)
    for name, tensor in start.items():
        assert torch.equal(final.model[name], tensor), name  # bit-identical
    assert set(final.optim["state"]) == {n for n in final.model if is_adapter_name(n)}
    adapter = read_adapter(result.run_dir / ADAPTER_FILE)
    assert adapter.settings == cfg.lora and adapter.base == str(base.resolve())
    assert adapter.base_fingerprint == base_fingerprint(start.items())
    assert adapter.extra["step"] == "6"
    for name, tensor in adapter.tensors.items():
        assert torch.equal(tensor, final.model[name]), name
    assert any(t.abs().max() > 0 for n, t in adapter.tensors.items() if "lora_B" in n)  # it trained
    assert (result.run_dir / "step3-unsharded" / ADAPTER_FILE).is_file()  # each checkpoint has its own
    with safe_open(str(result.run_dir / ADAPTER_FILE), "pt") as f:
        assert f.metadata()["rank"] == "4" and f.metadata()["targets"] == "att_proj,attn_out,ff_proj,ff_out"
    assert losses(result.run_dir)[6] < losses(result.run_dir)[1]


def test_resuming_a_lora_run_reapplies_the_adapters(tmp_path, lora_run):
    base, data, _, result, sets = lora_run
    split = finetune_config(
        base, data, tmp_path / "split", *sets, "stop_at=3", lora={"rank": 4, "alpha": 8.0, "dropout": 0.0}
    )
    quiet(split)
    overrides = [
        f"save_folder={tmp_path / 'split'}",
        f"load_path={tmp_path / 'split' / 'step3-unsharded'}",
        "stop_at=6",
    ]
    resumed = load_config(config_file=tmp_path / "split" / "config.yaml", overrides=overrides).config
    assert resumed.lora == split.lora  # the saved config carries the LoRA settings
    quiet(resumed, continuing=True)
    assert losses(tmp_path / "split") == losses(result.run_dir)
    assert read_adapter(tmp_path / "split" / ADAPTER_FILE).base == str(base.resolve())  # not its own step3


def test_merge_writes_weights_whose_logits_equal_the_adapted_model(tmp_path, lora_run):
    base, data, cfg, result, _ = lora_run
    recorded = read_adapter_base(result.run_dir)  # the base the adapter records
    merged = merge_adapter(result.run_dir, recorded, tmp_path / "merged")
    assert merged.base == base.resolve() and merged.modules == 8
    found = read_checkpoint(merged.output)  # what generate, eval and convert-hf read
    assert found.config.lora is None and found.config.model == cfg.model
    adapted = build_model(cfg.model, "meta")
    apply_lora(adapted, cfg.lora)
    adapted.load_state_dict(read_unsharded(result.checkpoint).model, assign=True)
    ids = _ids(cfg, seed=5)
    merged_logits, adapted_logits = logits_of(load_model(found), ids), logits_of(adapted, ids)
    # fp32 forward passes in two orders (x W' vs x W + s (x A) B) agree to fp32 rounding.
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-5, atol=1e-5)
    # An adapter given where a checkpoint is read is folded into its recorded base in memory.
    in_memory = read_checkpoint(result.run_dir / ADAPTER_FILE)
    assert in_memory.kind == "adapter" and in_memory.config.model == cfg.model
    assert torch.equal(logits_of(load_model(in_memory), ids), merged_logits)
    # The merged weights are a base like any other, to finetune again.
    assert finetune_config(merged.output, data, tmp_path / "again").load_path == str(merged.output.resolve())


def test_merge_refuses_another_base_unless_forced(tmp_path, lora_run):
    _, _, _, result, _ = lora_run
    other = base_checkpoint(tmp_path / "other", seed=9)
    file = result.run_dir / ADAPTER_FILE
    with pytest.raises(CheckpointError, match="is not the base"):
        merge_adapter(file, read_adapter_base(file, other), tmp_path / "m")
    forced = merge_adapter(file, read_adapter_base(file, other), tmp_path / "m", force=True)
    assert forced.warnings and (tmp_path / "m" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="LoRA run"):
        read_adapter_base(result.run_dir, result.checkpoint)


def test_adapter_dropout_acts_in_training_only():
    linear = torch.nn.Linear(8, 8, bias=False)
    model = torch.nn.Module()
    model.transformer = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.Module()])})
    model.transformer["blocks"][0].ff_out = linear
    apply_lora(
        model, LoRAConfig(rank=2, dropout=0.5, targets=["ff_out"]), generator=torch.Generator().manual_seed(0)
    )
    layer = model.transformer["blocks"][0].ff_out
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 8)
    layer.train()
    assert not torch.equal(layer(x), layer(x))  # a new dropout mask each call
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    expected = x @ linear.weight.T + layer.scaling * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)
