"""GPT-2's byte-level BPE alphabet, shared by every byte-level tokenizer mlxd reads (the chat
models' and whisper's): each byte 0–255 is written as one printable character."""

from __future__ import annotations


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character → byte value."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping: dict[str, int] = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            mapping[chr(byte)] = byte
        else:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping
