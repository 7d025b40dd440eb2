"""Which blocks each `activation_checkpointing` mode recomputes in the backward pass.

The trainer wraps these blocks; the memory plan counts them. The selective modes follow upstream:
`one_in_k` checkpoints blocks 0, k, 2k, ...; `two_in_three` / `three_in_four` all blocks but those.
"""

from __future__ import annotations

from olmo_cli.errors import ConfigError

__all__ = ["checkpointed_blocks"]

_EVERY_KTH = {"whole_layer": 1, "one_in_two": 2, "one_in_three": 3, "one_in_four": 4, "one_in_eight": 8}
_ALL_BUT_KTH = {"two_in_three": 3, "three_in_four": 4}


def checkpointed_blocks(mode: str | None, n_layers: int) -> list[int]:
    """Indices of the blocks `mode` checkpoints whole (none for `fine_grained`, which works inside them)."""
    if mode is None or mode == "fine_grained":
        return []
    if mode in _EVERY_KTH:
        return [i for i in range(n_layers) if i % _EVERY_KTH[mode] == 0]
    if mode in _ALL_BUT_KTH:
        return [i for i in range(n_layers) if i % _ALL_BUT_KTH[mode] != 0]
    raise ConfigError(f"activation_checkpointing {mode!r} is not a known mode")
