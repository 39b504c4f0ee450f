"""The calls in one tool-call section's text, per format: what mlx-lm 0.32's
`mlx_lm/tool_parsers/<format>.py` `parse_tool_call(text, tools)` returns, as a list of
`ParsedCall` (tests/unit/test_tool_formats.py checks each against mlx-lm's own module).

A section is the text between the format's start and end markers (engines/llm/chat_formats.py
`SECTIONS`), markers excluded. A function returns None where mlx-lm raises (nothing parses as a
call): the section is then content, never lost. Values are typed by the tool's `parameters`
schema where the format writes them as bare text (qwen3_coder, glm47, minimax_m2, minicpm5,
longcat), exactly as mlx-lm converts them.
"""

from __future__ import annotations

from collections.abc import Callable

from server.tool_formats.calls import ParsedCall, Tools
from server.tool_formats.json_bodies import json_tools, kimi_k2, kimi_k3, mistral, mistral_cut
from server.tool_formats.notation_bodies import function_gemma, gemma4, pythonic, pythonic_cut
from server.tool_formats.xml_bodies import glm47, longcat, minicpm5, minimax_m2, qwen3_coder

BODIES: dict[str, Callable[[str, Tools | None], list[ParsedCall] | None]] = {
    "json_tools": json_tools,
    "qwen3_coder": qwen3_coder,
    "glm47": glm47,
    "minimax_m2": minimax_m2,
    "minicpm5": minicpm5,
    "kimi_k2": kimi_k2,
    "kimi_k3": kimi_k3,
    "longcat": longcat,
    "mistral": mistral,
    "gemma4": gemma4,
    "function_gemma": function_gemma,
    "pythonic": pythonic,
}

# The formats that write a turn's calls as one list (mistral's `[{…}, …]`, pythonic's
# `[f(…), …]`): a list cut after whole calls, as the list it began, where mlx-lm reads no call.
# A one-call turn's output is so cut: the end watch (server/first_call.py) stops it after its
# first call, before the list closes.
CUT_LISTS: dict[str, Callable[[str, Tools | None], list[ParsedCall] | None]] = {
    "mistral": mistral_cut,
    "pythonic": pythonic_cut,
}
