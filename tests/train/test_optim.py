"""Parameter groups and AdamW as upstream builds them (docs/format.md §6.1, §6.2), checked on small models
with the presets' architecture switches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from olmo_cli.config.schema import TrainConfig
from olmo_cli.model.olmo import build_model
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.optim import build_optimizer, param_groups
from tests._fixtures import small

LINEARS = ("att_proj", "attn_out", "ff_out", "ff_proj")


def block_linears(n_layers: int = 2) -> list[str]:
    return sorted(f"transformer.blocks.{i}.{m}.weight" for i in range(n_layers) for m in LINEARS)


def test_olmo_1b_tied_embedding_is_the_only_undecayed_parameter():
    cfg = small("1b")
    groups = param_groups(build_model(cfg.model, "meta"), cfg)
    assert [g["param_names"] for g in groups] == [block_linears(), ["transformer.wte.weight"]]
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]


def test_olmo_7b_untied_output_is_decayed_embedding_is_not():
    cfg = small("7b")
    groups = param_groups(build_model(cfg.model, "meta"), cfg)
    assert groups[0]["param_names"] == sorted([*block_linears(), "transformer.ff_out.weight"])
    assert groups[1]["param_names"] == ["transformer.wte.weight"]


def test_olmo_7b_0424_decays_everything_in_one_group():
    cfg = small("7b-0424")
    model = build_model(cfg.model, "meta")
    (group,) = param_groups(model, cfg)
    assert group["param_names"] == sorted(name for name, _ in model.named_parameters())
    assert "transformer.wte.weight" in group["param_names"]


def test_groups_carry_upstream_fields_and_tensors_in_name_order():
    cfg = small("7b", n_layers=11).model_copy(update={"max_grad_norm": 0.5})
    model = build_model(cfg.model, "meta")
    named = dict(model.named_parameters())
    for group in param_groups(model, cfg):
        assert group["sharded"] is False
        assert group["max_grad_norm"] == 0.5 and group["max_grad_norm_ratio"] is None
        # Plain string order: blocks.10 sorts before blocks.2, as upstream's sorted() does.
        assert group["param_names"] == sorted(group["param_names"])
        assert all(p is named[n] for n, p in zip(group["param_names"], group["params"], strict=True))
    names = param_groups(model, cfg)[0]["param_names"]
    assert names.index("transformer.blocks.10.att_proj.weight") < names.index(
        "transformer.blocks.2.att_proj.weight"
    )


@pytest.mark.parametrize("decay_norm_and_bias", [False, True])
def test_biases_and_affine_norms_follow_decay_norm_and_bias(decay_norm_and_bias):
    cfg = small(
        "7b",
        include_bias=True,
        bias_for_layer_norm=True,
        layer_norm_with_affine=True,
        attention_layer_norm=True,
        attention_layer_norm_with_affine=True,
    )
    cfg.optimizer.decay_norm_and_bias = decay_norm_and_bias
    model = build_model(cfg.model, "meta")
    groups = param_groups(model, cfg)
    decayed, undecayed = groups[0]["param_names"], groups[1]["param_names"]
    norms_and_biases = sorted(
        n for n in dict(model.named_parameters()) if n.endswith("bias") or "norm" in n or "ln_f" in n
    )
    assert (
        "transformer.ff_out.bias" in norms_and_biases
        and "transformer.blocks.0.q_norm.weight" in norms_and_biases
    )
    assert "transformer.ln_f.bias" in norms_and_biases
    if decay_norm_and_bias:
        assert set(norms_and_biases) <= set(decayed)
        assert undecayed == ["transformer.wte.weight"]
    else:
        assert undecayed == sorted([*norms_and_biases, "transformer.wte.weight"])
        assert decayed == sorted([*block_linears(), "transformer.ff_out.weight"])


def test_learned_positions_follow_decay_embeddings():
    cfg = small("1b", rope=False)
    model = build_model(cfg.model, "meta")
    assert param_groups(model, cfg)[1]["param_names"] == ["transformer.wpe.weight", "transformer.wte.weight"]
    cfg.optimizer.decay_embeddings = True
    (group,) = param_groups(model, cfg)
    assert "transformer.wpe.weight" in group["param_names"]


def test_tied_and_frozen_parameters():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight  # registered under two names, optimized once
            self.frozen = nn.Linear(3, 3, bias=False)
            self.frozen.weight.requires_grad_(False)

    (group,) = param_groups(Tied(), TrainConfig())
    assert group["param_names"] == ["a.weight"]


def test_unknown_parameter_kind_is_an_error():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match="'inner.gain'.*Scale"):
        param_groups(nn.ModuleDict({"inner": Scale()}), TrainConfig())


def test_wrapper_prefixes_are_not_part_of_names():
    assert clean_param_name("_fsdp_wrapped_module.transformer._fsdp_wrapped_module.wte.weight") == (
        "transformer.wte.weight"
    )
    assert clean_param_name("_orig_mod.blocks.0._checkpoint_wrapped_module.ff_out.weight") == (
        "blocks.0.ff_out.weight"
    )


def test_build_optimizer_uses_the_config_hyperparameters():
    cfg = small("1b")
    optim = build_optimizer(build_model(cfg.model, "cpu", seed=0), cfg)
    assert isinstance(optim, torch.optim.AdamW)
    decay, no_decay = optim.param_groups
    for group in optim.param_groups:
        assert group["lr"] == 4e-4 and group["eps"] == 1e-5 and group["betas"] == (0.9, 0.95)
        assert group["foreach"] is None and group["fused"] is True  # CPU: torch's fused AdamW kernel
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_adamw_step_is_upstreams_decoupled_update():
    """One step by hand (§6.2): p <- p(1 - lr wd); m, v moments; bias-corrected update with eps 1e-5."""
    layer = nn.Linear(4, 3, bias=False)
    cfg = TrainConfig.model_validate(
        {"optimizer": {"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5}}
    )
    optim = build_optimizer(layer, cfg)
    p0 = layer.weight.detach().clone()
    grad = torch.linspace(-1e-4, 2e-4, 12).reshape(3, 4)  # tiny: eps matters
    layer.weight.grad = grad.clone()
    optim.step()
    lr, wd, (b1, b2), eps = 0.1, 0.5, (0.9, 0.95), 1e-5
    m, v = (1 - b1) * grad, (1 - b2) * grad**2
    expected = p0 * (1 - lr * wd) - (lr / (1 - b1)) * m / (v.sqrt() / (1 - b2) ** 0.5 + eps)
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-6, atol=1e-7)
