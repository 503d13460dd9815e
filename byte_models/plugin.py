"""What the byte-model package adds to the core: the `tokensurgery bytes` and `tokensurgery
byte-model` commands (found through the `tokensurgery.plugins` entry point)."""

from __future__ import annotations

from tokensurgery.plugins import register_command


def register() -> None:
    from .cli import byte_model_group, bytes_group

    register_command(bytes_group)
    register_command(byte_model_group)
