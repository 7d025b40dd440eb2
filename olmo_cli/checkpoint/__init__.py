"""Our and upstream OLMo's checkpoints: their layouts, kinds, and the readers and writers of each.

- `layout`: every file and directory name (stepN/, stepN-unsharded/, model.safetensors, ...), the
  latest checkpoint of a folder.
- `kind`: what a path holds, from its files alone (unsharded, sharded, hf, quantized, adapter).
- `weights`: `CheckpointWeights` / `CheckpointConfig`, what reading any kind gives.
- `unsharded`, `sharded`: upstream's unsharded directory and our torch.distributed.checkpoint one.
- `model_state`, `optim_state`, `trainer_state`: a model / AdamW / train.pt state in canonical form.
- `olmo_safetensors`: upstream's key encoding inside .safetensors files.
- `safe_pickle`, `dcp_safe`, `names`: reading foreign files without running code or leaving the directory.
Reading any checkpoint by kind is `olmo_cli.load`, one layer up.
"""
