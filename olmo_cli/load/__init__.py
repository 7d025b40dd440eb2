"""Opening any checkpoint, decided once: the layer above the format packages.

- `olmo_cli.checkpoint.kind` (below) says what a path is from its files: unsharded, sharded, hf,
  quantized, adapter, or a run folder (its latest checkpoint).
- `read`: `read_checkpoint` (config, native weights, tokenizer; optionally the optimizer and trainer
  state) and `read_checkpoint_config` (config only) dispatch to each kind's reader; `refuse_kinds` is the
  one message for a kind a command cannot use.
- `build`: `load_model` (an eval-mode model, quantized modules for a quantized checkpoint) and
  `load_tokenizer`.
- `adapter`: a LoRA adapter folded into an already-read base (in memory, or written by
  `olmo finetune merge`).
Every command and the trainer's restore, finetune and resume open checkpoints through here.
"""
