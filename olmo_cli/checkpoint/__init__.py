"""Checkpoint reading and writing in upstream OLMo's layouts; every foreign pickle is read restricted."""

from olmo_cli.checkpoint.layout import (
    checkpoint_dir_name,
    find_latest_checkpoint,
    is_unsharded,
    parse_step,
    resolve_state_file,
)
from olmo_cli.checkpoint.model_state import check_model_state
from olmo_cli.checkpoint.olmo_safetensors import (
    decode_state,
    encode_state,
    load_olmo_safetensors,
    save_olmo_safetensors,
)
from olmo_cli.checkpoint.unsharded import UnshardedCheckpoint, read_unsharded, write_unsharded

__all__ = [
    "UnshardedCheckpoint",
    "check_model_state",
    "checkpoint_dir_name",
    "decode_state",
    "encode_state",
    "find_latest_checkpoint",
    "is_unsharded",
    "load_olmo_safetensors",
    "parse_step",
    "read_unsharded",
    "resolve_state_file",
    "save_olmo_safetensors",
    "write_unsharded",
]
