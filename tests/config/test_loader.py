"""load_config: files and presets, upstream semantics, and the messages users see."""

import pytest

from olmo_cli.config.loader import load_config
from olmo_cli.config.schema import TrainConfig, parse_duration
from olmo_cli.errors import ConfigError, UsageError
from tests._upstream_config import upstream_style_config


def test_upstream_style_config_loads_as_it_is(write_config):
    loaded = load_config(config_file=write_config(upstream_style_config()))
    cfg = loaded.config
    assert cfg.wandb.name == "OLMo-1.7-7B"
    assert cfg.save_folder == "runs/OLMo-1.7-7B"
    assert cfg.device_eval_batch_size == 2
    assert cfg.scheduler.t_max == 3_000_000_000_000
    assert cfg.scheduler.t_warmup == 10_485_760_000
    assert cfg.model.clip_qkv == 8.0 and cfg.model.effective_n_kv_heads == 32
    assert cfg.evaluators[0].data.datasets["c4_en-validation"][0].endswith("part-0-00000.npy")
    assert cfg.evaluators[1].type == "downstream"
    assert parse_duration(cfg.max_duration) == (2, "epochs")
    reported = {item.path: item.value for item in loaded.ignored}
    assert reported == {"model.flash_attention": True, "sharded_checkpointer": "olmo_core"}


def test_overrides_apply_before_interpolation(write_config):
    loaded = load_config(
        config_file=write_config(upstream_style_config()),
        overrides=["run_name=mine", "model.n_layers=4", "device_train_microbatch_size=8", "compile={}"],
    )
    cfg = loaded.config
    assert cfg.save_folder == "runs/mine" and cfg.wandb.name == "mine"
    assert cfg.device_eval_batch_size == 8
    assert cfg.model.n_layers == 4
    assert cfg.compile is not None and cfg.compile.fullgraph is False


def _error(write_config, data=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file=write_config(data or upstream_style_config()), overrides=list(overrides))
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.n_layres=4"],
            "model.n_layres: unknown key 'n_layres'; did you mean 'n_layers'? (from --set)",
        ),
        (["optimzer.learning_rate=1"], "optimzer: unknown key 'optimzer'; did you mean 'optimizer'?"),
        (["evaluators.0.dta={}"], "evaluators.0.dta: unknown key 'dta'; did you mean 'data'?"),
        (
            ["optimizer.learning_rate=-3e-4"],
            "optimizer.learning_rate: got -0.0003, expected a value greater than 0",
        ),
        (
            ["model.activation_type=gelu2"],
            "model.activation_type: got 'gelu2', expected 'gelu', 'relu' or 'swiglu'",
        ),
        (["max_duration=3 days"], "max_duration: max_duration '3 days' is not steps"),
        (["model.d_model=100"], "model: d_model (100) must be divisible by n_heads (32)"),
        (["data.datasets={a: [x]}"], "data.paths and data.datasets are mutually exclusive"),
        (["evaluators=[{type: lm}]"], "evaluators.0.label: is required but missing"),
    ],
)
def test_validation_errors_name_path_value_and_expectation(write_config, overrides, expected):
    message = _error(write_config, overrides=overrides)
    assert expected in message
    assert "has 1 invalid setting" in message


def test_several_errors_are_listed_in_one_message(write_config):
    message = _error(write_config, overrides=["model.n_heads=0", "seed=abc"])
    assert "has 2 invalid settings" in message
    assert "model.n_heads" in message and "seed: got 'abc'" in message


def test_unknown_key_in_the_file_lists_choices_when_nothing_is_close(write_config):
    data = upstream_style_config()
    data["speed_monitor"]["zzz"] = 1
    message = _error(write_config, data)
    assert (
        "speed_monitor.zzz: unknown key 'zzz'; valid keys here: window_size, gpu_flops_available" in message
    )
    assert "(from --set)" not in message


def test_legacy_upstream_forms_are_rewritten():
    cfg = TrainConfig.model_validate(
        {
            "activation_checkpointing": True,
            "optimizer": {"name": "decoupled_lionw", "eps": 1e-8, "no_decay_norm_and_bias": True},
        }
    )
    assert cfg.activation_checkpointing == "whole_layer"
    assert cfg.optimizer.name == "lionw" and cfg.optimizer.eps == 1e-5
    assert cfg.optimizer.decay_norm_and_bias is False and cfg.optimizer.decay_embeddings is False
    assert cfg.optimizer.no_decay_norm_and_bias is None
    assert TrainConfig.model_validate({"activation_checkpointing": False}).activation_checkpointing is None


def test_defaults_are_upstreams():
    cfg = TrainConfig()
    assert (cfg.seed, cfg.max_duration, cfg.global_train_batch_size) == (6198, 10000, 512)
    assert (cfg.model.attention_dropout, cfg.model.include_bias, cfg.model.init_fn) == (0.1, True, "normal")
    assert (cfg.optimizer.name, cfg.optimizer.eps, cfg.optimizer.betas) == ("lionw", 1e-5, (0.9, 0.95))
    assert (cfg.scheduler.t_warmup, cfg.scheduler.alpha_f) == (100, 0.1)
    assert cfg.fsdp.sharding_strategy == "FULL_SHARD" and cfg.fsdp.precision == "pure"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10000, (10000, "steps")),
        ("739_328", (739328, "steps")),
        ("2e12T", (2 * 10**12, "tokens")),
        ("2ep", (2, "epochs")),
        ("1e4", (10000, "steps")),
    ],
)
def test_max_duration_forms(value, expected):
    assert parse_duration(value) == expected


def test_only_one_source_and_known_presets():
    with pytest.raises(UsageError, match="exactly one"):
        load_config()
    with pytest.raises(UsageError, match="did you mean '7b'"):
        load_config(preset="7bb")


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(config_file=tmp_path / "list.yaml")


# Every field of upstream's config classes (allenai/OLMo v0.6.0), so none is dropped or renamed.
UPSTREAM_FIELDS = {
    "model": """d_model n_heads n_kv_heads clip_qkv n_layers mlp_ratio mlp_hidden_size activation_type
        block_type block_group_size alibi alibi_bias_max rope rope_full_precision rope_theta
        flash_attention attention_dropout multi_query_attention attention_layer_norm residual_dropout
        embedding_dropout embedding_layer_norm layer_norm_type layer_norm_with_affine layer_norm_eps
        attention_layer_norm_with_affine max_sequence_length include_bias bias_for_layer_norm
        scale_logits vocab_size embedding_size weight_tying eos_token_id pad_token_id init_device
        init_fn init_std init_cutoff_factor precision scale_emb_init emb_init_std norm_after""",
    "optimizer": """name learning_rate weight_decay betas eps no_decay_norm_and_bias selective_updates
        decay_norm_and_bias decay_embeddings metrics_log_interval record_update_metrics""",
    "scheduler": """name units t_warmup t_max alpha_f grad_clip_warmup_steps grad_clip_warmup_factor
        warmup_min_lr""",
    "data": """paths memmap_dtype datasets label_mask_paths pad_direction generate_attention_mask
        generate_doc_lengths num_workers drop_last pin_memory prefetch_factor persistent_workers
        timeout seed instance_filter custom_dataset""",
    "tokenizer": "identifier truncate_direction",
    "speed_monitor": "window_size gpu_flops_available",
    "fsdp": """use_orig_params sharding_strategy wrapping_strategy precision
        hybrid_sharding_num_model_replicas""",
    "": """run_name seed epoch dry_run model optimizer scheduler data restore_dataloader
        fast_forward_batches evaluators eval_interval tokenizer save_folder remote_save_folder
        canceled_check_interval save_interval save_interval_unsharded save_interval_ephemeral
        save_num_checkpoints_to_keep save_num_unsharded_checkpoints_to_keep save_overwrite
        force_save_unsharded no_pre_train_checkpoint load_path load_path_sharded_checkpointer
        try_load_latest_save reset_optimizer_state reset_trainer_state sharded_checkpointer
        new_style_checkpoints max_duration global_train_batch_size device_train_batch_size
        device_train_microbatch_size device_eval_batch_size eval_subset_num_batches eval_on_load
        device_train_grad_accum max_grad_norm max_grad_norm_ratio precision wandb speed_monitor
        console_log_interval gen1_gc_interval compile distributed_strategy fsdp ddp single
        softmax_auxiliary_loss auxiliary_loss_multiplier time_limit extra_steps_after_cancel
        early_stopping_factor save_data_indices python_profiling torch_profiling stop_at stop_after
        activation_checkpointing fused_loss hf_datasets_cache_dir module_outputs_save_steps""",
}


# Our own sections, not upstream's (each documented in config/schema.py and left out of dumps unless set).
OLMO_EXTENSIONS = {"": {"lora"}}


@pytest.mark.parametrize("section", list(UPSTREAM_FIELDS))
def test_every_upstream_field_exists(section):
    model = TrainConfig if not section else TrainConfig.model_fields[section].annotation
    fields = set(model.model_fields) - OLMO_EXTENSIONS.get(section, set())
    assert set(UPSTREAM_FIELDS[section].split()) == fields


def test_an_unset_extension_is_not_dumped():
    assert "lora" not in TrainConfig().model_dump(mode="json")
    assert TrainConfig(lora={"rank": 4}).model_dump(mode="json")["lora"]["rank"] == 4


def test_upstream_run_control_olmo_does_not_act_on_is_reported():
    # Upstream writes per-rank data-indices files and runs extra steps after a cancel; olmo does
    # neither, so a config that asks for them hears so. The values olmo's behaviour matches pass quietly.
    loaded = load_config(
        preset="tiny",
        overrides=["save_data_indices=true", "extra_steps_after_cancel=3", "canceled_check_interval=10"],
    )
    reported = {item.path: item.value for item in loaded.ignored}
    assert reported == {
        "save_data_indices": True,
        "extra_steps_after_cancel": 3,
        "canceled_check_interval": 10,
    }
    quiet = load_config(preset="tiny", overrides=["save_data_indices=false", "extra_steps_after_cancel=0"])
    assert quiet.ignored == []


def test_a_z_loss_multiplier_other_than_upstreams_fixed_one_is_reported():
    # Upstream's trainer scales the z-loss by 1e-4 whatever auxiliary_loss_multiplier says, as olmo does.
    loaded = load_config(
        preset="tiny", overrides=["softmax_auxiliary_loss=true", "auxiliary_loss_multiplier=1e-5"]
    )
    assert [(item.path, item.value) for item in loaded.ignored] == [("auxiliary_loss_multiplier", 1e-5)]
    assert "1e-4" in loaded.ignored[0].why
    assert load_config(preset="tiny", overrides=["auxiliary_loss_multiplier=1e-4"]).ignored == []


def test_keys_of_upstreams_current_trainer_load(write_config):
    # allenai/OLMo main writes these into every config.yaml it saves (checkpoints too).
    data = upstream_style_config()
    data.update({"distributed_strategy": "single", "single": {"device": "auto"}})
    data["data"]["custom_dataset"] = None
    loaded = load_config(config_file=write_config(data))
    assert not {"distributed_strategy", "single.device", "data.custom_dataset"} & {
        i.path for i in loaded.ignored
    }
    data["single"]["device"] = "mps"
    data["data"]["custom_dataset"] = {"name": "my.module.Dataset"}
    reported = {i.path for i in load_config(config_file=write_config(data)).ignored}
    assert {"single.device", "data.custom_dataset"} <= reported


def test_gqa_heads_beside_multi_query_false_are_written_as_upstream_loads_them():
    # Upstream's model refuses n_kv_heads next to multi_query_attention: false (which the OLMo 1
    # presets set), so a config olmo writes with GQA heads leaves multi_query_attention unset.
    gqa = load_config(preset="tiny", overrides=["model.n_kv_heads=2"]).config.model
    assert gqa.multi_query_attention is None and gqa.effective_n_kv_heads == 2
    assert gqa.model_dump(mode="json")["multi_query_attention"] is None
    same = load_config(preset="tiny", overrides=["model.n_kv_heads=4"]).config.model
    assert same.multi_query_attention is False and same.effective_n_kv_heads == 4
