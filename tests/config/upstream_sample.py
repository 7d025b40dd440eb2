"""A config shaped like upstream's official OLMo-7B-0724.yaml, written by the tests themselves
(the upstream reference folder is never read)."""


def upstream_style_config() -> dict:
    """A config shaped like upstream's official OLMo-7B-0724.yaml (same keys, interpolations and
    value forms), with a handful of data and evaluator paths instead of a thousand."""
    return {
        "run_name": "OLMo-1.7-7B",
        "seed": 6198,
        "dry_run": False,
        "wandb": {"name": "${run_name}", "project": "olmo-medium", "group": "OLMo-1.7-7B"},
        "model": {
            "d_model": 4096, "n_heads": 32, "n_layers": 32, "mlp_hidden_size": 22016,
            "weight_tying": False, "alibi": False, "rope": True, "flash_attention": True,
            "attention_dropout": 0.0, "attention_layer_norm": False, "clip_qkv": 8.0,
            "include_bias": False, "block_type": "sequential", "layer_norm_type": "default",
            "layer_norm_with_affine": False, "bias_for_layer_norm": False,
            "attention_layer_norm_with_affine": False, "activation_type": "swiglu",
            "residual_dropout": 0.0, "embedding_dropout": 0.0, "max_sequence_length": 4096,
            "vocab_size": 50280, "embedding_size": 50304, "eos_token_id": 50279, "pad_token_id": 1,
            "init_device": "meta", "init_fn": "mitchell",
        },
        "compile": None,
        "optimizer": {
            "name": "adamw", "learning_rate": 3.0e-4, "weight_decay": 0.1, "decay_norm_and_bias": True,
            "decay_embeddings": True, "betas": [0.9, 0.95], "metrics_log_interval": 10,
        },
        "scheduler": {
            "name": "cosine_with_warmup", "units": "tokens", "t_warmup": 10485760000, "t_max": "3e12",
            "alpha_f": 0.1, "grad_clip_warmup_steps": 2097152000, "grad_clip_warmup_factor": 5,
        },
        "tokenizer": {
            "identifier": "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json",
            "truncate_direction": "right",
        },
        "save_folder": "runs/${run_name}",
        "remote_save_folder": None,
        "save_overwrite": True,
        "save_interval": 1000,
        "save_num_checkpoints_to_keep": -1,
        "sharded_checkpointer": "olmo_core",
        "save_interval_unsharded": None,
        "save_num_unsharded_checkpoints_to_keep": -1,
        "load_path": None,
        "max_duration": "2ep",
        "global_train_batch_size": 1024,
        "device_train_microbatch_size": 2,
        "precision": "amp_bf16",
        "fsdp": {"wrapping_strategy": "by_block_and_size", "precision": "mixed"},
        "max_grad_norm": 1.0,
        "max_grad_norm_ratio": None,
        "speed_monitor": {"window_size": 1},
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
                        "c4_en-validation": [
                            "https://olmo-data.org/eval-data/perplexity/v3_small_gptneox20b/c4_en/val/part-0-00000.npy"
                        ],
                    },
                },
            },
            {"label": "piqa", "type": "downstream"},
            {"label": "hellaswag", "type": "downstream"},
        ],
        "data": {
            "pad_direction": "right", "num_workers": 32, "drop_last": True, "pin_memory": True,
            "prefetch_factor": 8, "persistent_workers": True, "timeout": 0,
            "paths": [
                "https://olmo-data.org/preprocessed/cc_en_head/v1_5/gpt-neox-olmo-dolma-v1_5/part-000-00000.npy",
                "https://olmo-data.org/preprocessed/cc_en_head/v1_5/gpt-neox-olmo-dolma-v1_5/part-001-00000.npy",
            ],
        },
    }
