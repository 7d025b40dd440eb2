"""A config shaped like upstream's official OLMo-7B-0724.yaml, written by the tests themselves (the
upstream reference folder is never read): the one sample that the config, CLI and limit tests load."""


def upstream_style_config() -> dict:
    """A config shaped like upstream's official OLMo-7B-0724.yaml (the same keys, interpolations and
    value forms: float counts, `2ep`, data sets by name), with two data and evaluator paths instead of
    hundreds."""
    ppl = "s3://ai2-llm/eval-data/perplexity/v3_small_gptneox20b"
    return {
        "run_name": "OLMo-1.7-7B",
        "seed": 6198,
        "dry_run": False,
        "wandb": {"name": "${run_name}", "project": "olmo-medium", "group": "${run_name}"},
        "model": {
            "d_model": 4096,
            "n_heads": 32,
            "n_layers": 32,
            "mlp_hidden_size": 22016,
            "weight_tying": False,
            "alibi": False,
            "rope": True,
            "flash_attention": True,
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "clip_qkv": 8.0,
            "include_bias": False,
            "block_type": "sequential",
            "layer_norm_type": "default",
            "layer_norm_with_affine": False,
            "bias_for_layer_norm": False,
            "attention_layer_norm_with_affine": False,
            "activation_type": "swiglu",
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
            "max_sequence_length": 4096,
            "vocab_size": 50280,
            "embedding_size": 50304,
            "eos_token_id": 50279,
            "pad_token_id": 1,
            "init_device": "meta",
            "init_fn": "mitchell",
        },
        "compile": None,
        "optimizer": {
            "name": "adamw",
            "learning_rate": 3.0e-4,
            "weight_decay": 0.1,
            "eps": 1.0e-5,
            "decay_norm_and_bias": True,
            "decay_embeddings": True,
            "betas": [0.9, 0.95],
            "metrics_log_interval": 10,
        },
        "scheduler": {
            "name": "cosine_with_warmup",
            "units": "tokens",
            "t_warmup": 10485760000,
            "t_max": 3e12,  # written as a float, as upstream does
            "alpha_f": 0.1,
            "grad_clip_warmup_steps": 2097152000,
            "grad_clip_warmup_factor": 5,
        },
        "tokenizer": {
            "identifier": "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json",
            "truncate_direction": "right",
        },
        "save_folder": "runs/${run_name}",
        "remote_save_folder": None,
        "save_overwrite": True,
        "save_interval": 1000,
        "save_interval_ephemeral": 250,
        "save_num_checkpoints_to_keep": -1,
        "sharded_checkpointer": "olmo_core",
        "save_interval_unsharded": None,
        "save_num_unsharded_checkpoints_to_keep": -1,
        "load_path": None,
        "max_duration": "2ep",
        "stop_at": 477000,
        "global_train_batch_size": 1024,
        "device_train_microbatch_size": 2,
        "precision": "amp_bf16",
        "fsdp": {"wrapping_strategy": "by_block_and_size", "precision": "mixed"},
        "max_grad_norm": 1.0,
        "max_grad_norm_ratio": None,
        "speed_monitor": {"window_size": 1},
        "gen1_gc_interval": 1,
        "eval_interval": 1000,
        "eval_subset_num_batches": -1,
        "device_eval_batch_size": "${device_train_microbatch_size}",
        "evaluators": [
            {
                "label": "all-small-ppl-validation",
                "data": {
                    "num_workers": 0,
                    "drop_last": True,
                    "datasets": {
                        "c4_en-validation": [f"{ppl}/c4_en/val/part-0-00000.npy"],
                        "dolma_books-validation": [f"{ppl}/dolma_books/val/part-0-00000.npy"],
                    },
                },
            },
            {"label": "piqa", "type": "downstream"},
            {"label": "hellaswag", "type": "downstream"},
        ],
        "data": {
            "pad_direction": "right",
            "num_workers": 32,
            "drop_last": True,
            "pin_memory": True,
            "prefetch_factor": 8,
            "persistent_workers": True,
            "timeout": 0,
            "instance_filter": {
                "repetition_max_period": 13,
                "repetition_min_period": 1,
                "repetition_max_count": 32,
            },
            "paths": [
                "s3://ai2-llm/preprocessed/dolma/v1_7/part-000-00000.npy",
                "s3://ai2-llm/preprocessed/dolma/v1_7/part-000-00001.npy",
            ],
        },
    }


def olmo2_stage2_style_config(data_path: str) -> dict:
    """A config shaped like upstream's official-1124 OLMo2-7B-stage2-seed42.yaml (the OLMo 2 block, the
    dolma2 tokenizer, z-loss, the repetition filter, a 50B-token linear decay from a stage-1 checkpoint),
    its settings olmo does not act on included, with one local data path."""
    return {
        "run_name": "OLMo2-7B-stage2-seed42",
        "seed": 42,
        "model": {
            **{"d_model": 4096, "n_heads": 32, "n_layers": 32, "mlp_hidden_size": 22016},
            **{"weight_tying": False, "alibi": False, "rope": True, "rope_theta": 500000},
            **{"flash_attention": True, "attention_dropout": 0.0, "include_bias": False},
            **{"block_type": "sequential", "layer_norm_type": "rms", "layer_norm_with_affine": True},
            **{"layer_norm_eps": 1e-6, "bias_for_layer_norm": False, "attention_layer_norm": True},
            **{"attention_layer_norm_with_affine": True, "norm_after": True, "activation_type": "swiglu"},
            **{"max_sequence_length": 4096, "vocab_size": 100278, "embedding_size": 100352},
            **{"eos_token_id": 100257, "pad_token_id": 100277, "init_device": "meta", "init_fn": "normal"},
            **{"init_std": 0.02, "init_cutoff_factor": 3},
        },
        "softmax_auxiliary_loss": True,
        "auxiliary_loss_multiplier": 1e-5,
        "fused_loss": True,
        "optimizer": {
            **{"name": "adamw", "learning_rate": 0.000061499, "weight_decay": 0.1, "eps": 1e-8},
            **{"decay_norm_and_bias": True, "decay_embeddings": False, "betas": [0.9, 0.95]},
        },
        "scheduler": {"name": "linear_with_warmup", "t_warmup": 0, "alpha_f": 0},
        "tokenizer": {"identifier": "tokenizers/allenai_dolma2.json", "truncate_direction": "right"},
        "sharded_checkpointer": "olmo_core",
        "save_interval_unsharded": 1000,
        "load_path": None,
        "restore_dataloader": False,
        "no_pre_train_checkpoint": True,
        "max_duration": "50e9T",
        "stop_at": 11931,
        "global_train_batch_size": 1024,
        "device_train_microbatch_size": 2,
        "precision": "amp_bf16",
        "fsdp": {"wrapping_strategy": "by_block_and_size", "precision": "mixed"},
        "data": {
            **{"pad_direction": "right", "drop_last": True, "memmap_dtype": "uint32"},
            "instance_filter": {
                "repetition_max_period": 13,
                "repetition_min_period": 1,
                "repetition_max_count": 32,
            },
            "paths": [data_path],
        },
    }
