"""Which format a model writes tool calls and reasoning in, read once at load from its chat
template and vocabulary by mlx-lm 0.32's own rules (mlx_lm/tokenizer_utils.py:
`_infer_tool_parser`, `_infer_thinking`), plus two of ours where mlx-lm has no parser.

The names are mlx-lm's tool-parser module names; the HTTP edge parses each
(server/tool_formats/) and the forced-call grammar follows it (engines/llm/call_grammars.py):
- json_tools: `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen2.5/Qwen3, Hermes;
  also what the generic tool prompt asks of templates without tools: the default).
- qwen3_coder: `<tool_call><function=NAME><parameter=KEY>value</parameter>…</function></tool_call>`.
- glm47 (laguna): `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>…</tool_call>`.
- mistral: `[TOOL_CALLS][{…}, …]` or `[TOOL_CALLS]NAME[ARGS]{…}`.
- function_gemma, gemma4, kimi_k2, kimi_k3, minimax_m2, pythonic, longcat, minicpm5: their
  families' markup (the modules' docstrings in server/tool_formats/).
- llama3 (ours): a bare `{"name": …, "parameters": {…}}`, maybe after `<|python_tag|>`.
- harmony (ours): gpt-oss's channels; reasoning, answer and calls are all in them.

Invariants: `tool_format` is a pure function of its inputs (no tokenizer, no MLX); every
marker a format's parser needs is listed in `MARKERS`, so that the engine can keep those tokens
in the text it emits even when the vocabulary marks them special.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

DEFAULT_FORMAT = "json_tools"

# Formats mlx-lm names that are the same format as another.
_ALIASES = {"laguna": "glm47"}

# (start, end) of one call section, as mlx-lm's modules define them ("" end: to the end).
SECTIONS: dict[str, tuple[str, str]] = {
    "json_tools": ("<tool_call>", "</tool_call>"),
    "qwen3_coder": ("<tool_call>", "</tool_call>"),
    "glm47": ("<tool_call>", "</tool_call>"),
    "mistral": ("[TOOL_CALLS]", ""),
    "function_gemma": ("<start_function_call>", "<end_function_call>"),
    "gemma4": ("<|tool_call>", "<tool_call|>"),
    "kimi_k2": ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"),
    "kimi_k3": ("<|open|>tools<|sep|>", "<|close|>tools<|sep|>"),
    "minimax_m2": ("<minimax:tool_call>", "</minimax:tool_call>"),
    "pythonic": ("<|tool_call_start|>", "<|tool_call_end|>"),
    "longcat": ("<longcat_tool_call>", "</longcat_tool_call>"),
    "minicpm5": ("<function name=", "</function>"),
}

# The marker that ends one call, by format, where each call has one of its own (its section's
# end, or a call's inside a section that holds several): an output cut just after it holds the
# first call whole. The others write no end of a single call: mistral and pythonic list their
# calls (server/first_listed_call.py finds where the first ends), llama3's are bare JSON
# (server/first_call.py reads where the first object ends); harmony's turn ends with its call.
CALL_ENDS: dict[str, str] = {
    **{
        name: SECTIONS[name][1]
        for name in ("json_tools", "qwen3_coder", "glm47", "function_gemma", "gemma4", "longcat")
    },
    "minicpm5": SECTIONS["minicpm5"][1],
    "kimi_k2": "<|tool_call_end|>",
    "kimi_k3": "<|close|>call<|sep|>",
    "minimax_m2": "</invoke>",
}

HARMONY_MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>")

# Every marker a parser reads, by format (sections, inner markup, harmony's headers).
MARKERS: dict[str, tuple[str, ...]] = {
    **{name: tuple(m for m in section if m) for name, section in SECTIONS.items()},
    "kimi_k2": (
        *SECTIONS["kimi_k2"],
        "<|tool_call_begin|>",
        "<|tool_call_end|>",
        "<|tool_call_argument_begin|>",
    ),
    "kimi_k3": ("<|open|>", "<|close|>", "<|sep|>"),
    "gemma4": (*SECTIONS["gemma4"], '<|"|>'),
    "function_gemma": (*SECTIONS["function_gemma"], "<escape>"),
    "mistral": ("[TOOL_CALLS]", "[ARGS]"),
    "llama3": ("<|python_tag|>",),
    "harmony": HARMONY_MARKERS,
}
TOOL_FORMATS = tuple(sorted(MARKERS))

# Reasoning tags, single tokens of the vocabulary (mlx-lm's `_infer_thinking`, in its order).
_THINK_TOKENS = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
)
_GEMMA4_THINK = ("<|channel>thought", "<channel|>")


def tool_format(
    chat_template: str | None, vocab: Container[str], configured: str | None = None
) -> str:
    """The format of `configured` (a checkpoint's `tool_parser_type`, mlx-lm's override) if it
    is one we parse, else the one the template (then the vocabulary) shows, by mlx-lm's rules in
    its order, then ours; json_tools when nothing matches."""
    if configured:
        name = _ALIASES.get(configured, configured)
        if name in MARKERS:
            return name
    return _from_template(chat_template or "", vocab)


def _from_template(template: str, vocab: Container[str]) -> str:
    rules = (
        ("minimax_m2", "<minimax:tool_call>" in template),
        ("gemma4", "<|tool_call>" in template and "<tool_call|>" in template),
        ("function_gemma", "<start_function_call>" in template),
        ("longcat", "<longcat_tool_call>" in template),
        ("glm47", "<arg_key>" in template),
        ("pythonic", "<|tool_list_start|>" in template or "<|tool_call_start|>" in template),
        (
            "qwen3_coder",
            "<tool_call>\\n<function=" in template or "<tool_call>\n<function=" in template,
        ),
        ("kimi_k2", "<|tool_calls_section_begin|>" in template),
        ("minicpm5", '<function name="' in template and '<param name="' in template),
        ("mistral", "[TOOL_CALLS]" in template),
        ("json_tools", "<tool_call>" in template and "tool_call.name" in template),
    )
    for name, matches in rules:
        if matches:
            return name
    if all(t in vocab for t in ("<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>")):
        return "kimi_k3"
    if "<|tool_call_start|>" in vocab and "<|tool_call_end|>" in vocab:
        return "pythonic"
    # Ours, for templates mlx-lm has no parser for.
    if "<|channel|>" in template and "<|message|>" in template:
        return "harmony"
    llama_markup = "<|python_tag|>" in template or '"parameters"' in template
    if "<tool_call>" not in template and "tools" in template and llama_markup:
        return "llama3"
    return DEFAULT_FORMAT


def think_tags(chat_template: str | None, vocab: Mapping[str, Any]) -> tuple[str, str] | None:
    """The reasoning block's (open, close) tags: a pair that are single tokens of the vocabulary
    (mlx-lm's rule), Gemma 4's thought channel, or `<think>` named by the template; None for
    models that do not reason in tags."""
    for pair in _THINK_TOKENS:
        if all(tag in vocab for tag in pair):
            return pair
    if "<|channel>" in vocab and "<channel|>" in vocab:
        return _GEMMA4_THINK
    if "<think>" in (chat_template or ""):
        return _THINK_TOKENS[0]
    return None


def model_formats(
    tokenizer: Any, template_replaced: bool, configured: str | None = None
) -> tuple[str, tuple[str, str] | None]:
    """A loaded mlx-lm tokenizer's (tool format, think tags). `configured` (a models file's
    `tool_format`) wins; else mlx-lm's own choice, recorded in the tokenizer's `init_kwargs`
    (the checkpoint's `tool_parser_type`, else its rules on the checkpoint's template), unless
    a models-file template replaced the checkpoint's, which the same rules then read."""
    template = getattr(tokenizer, "chat_template", None)
    vocab = tokenizer.get_vocab()
    if configured is None and not template_replaced:
        configured = (getattr(tokenizer, "init_kwargs", None) or {}).get("tool_parser_type")
    return tool_format(template, vocab, configured), think_tags(template, vocab)


def hidden_special_ids(
    tokenizer: Any, fmt: str, tags: tuple[str, str] | None
) -> frozenset[int] | None:
    """The special tokens to leave out of emitted text: all the tokenizer marks special except
    the markers `fmt` and `tags` need (gpt-oss's `<|channel|>`, Kimi's section tokens, …).
    None when no marker is a special token: the tokenizer's own skipping then stands."""
    vocab = tokenizer.get_vocab()
    markers = [*MARKERS.get(fmt, ()), *(tags or ())]
    if tags == _GEMMA4_THINK:
        markers += ["<|channel>", "<channel|>"]
    special = {
        int(i)
        for i, token in tokenizer.added_tokens_decoder.items()
        if getattr(token, "special", False)
    }
    shown = {vocab[m] for m in markers if m in vocab} & special
    return frozenset(special - shown) if shown else None
