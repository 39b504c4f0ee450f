"""Reasoning per family: think tags against mlx-lm's own text state machine (the same reasoning
and answer, prompts that open the block included), and gpt-oss's harmony channels (analysis →
reasoning, final → content, commentary to a function → a call), each in any split."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.body import MAX_JSON_DEPTH
from server.chat_output import ChoiceOutput, collected_message
from server.reasoning import ReasoningParser, opened_in_prompt
from server.tool_formats.harmony import HarmonyParser

TAGS = {
    "qwen3": ("<think>", "</think>"),
    "longcat": ("<longcat_think>", "</longcat_think>"),
    "think_start": ("<|think:start|>", "<|think:end|>"),
    "gemma4": ("<|channel>thought", "<channel|>"),
}
THOUGHT = "\nThe user asks for the capital of France. It is Paris.\n"
CASES = [
    (family, opened, text)
    for family, (start, end) in TAGS.items()
    for opened, text in (
        (False, f"{start}{THOUGHT}{end}\n\nThe capital is Paris."),
        (True, f"{THOUGHT}{end}\n\nParis."),
        (False, "No block: just the answer <not a tag>."),
        (True, f"{THOUGHT} cut short by max_tokens"),
    )
]


def ours(opened: bool, tags: tuple[str, str], pieces: list[str]) -> tuple[str, str]:
    parser = ReasoningParser(opened, tags)
    reasoning = content = ""
    for delta in [*(parser.feed(p) for p in pieces), parser.finish()]:
        reasoning, content = reasoning + delta.reasoning, content + delta.content
    return reasoning, content


def mlx_lm_split(opened: bool, tags: tuple[str, str], text: str) -> tuple[str, str]:
    from mlx_lm.generate import TextStateMachine

    start, end = tags
    machine = TextStateMachine({"normal": [(start, "reasoning")], "reasoning": [(end, "normal")]})
    state, segments = TextStateMachine.split(
        machine.make_state("reasoning" if opened else "normal"), text
    )
    segments.append((state[0], state[3]))
    reasoning = "".join(piece for name, piece in segments if name == "reasoning")
    return reasoning, "".join(piece for name, piece in segments if name == "normal")


@pytest.mark.parametrize(("family", "opened", "text"), CASES)
def test_think_blocks_as_mlx_lm_splits_them(family: str, opened: bool, text: str) -> None:
    tags = TAGS[family]
    reasoning, content = mlx_lm_split(opened, tags, text)
    whole = ours(opened, tags, [text])
    # The blank lines after the block are no content of ours (mlx-lm sends them).
    assert whole == (reasoning, content.lstrip())
    for cut in range(1, len(text)):
        assert ours(opened, tags, [text[:cut], text[cut:]]) == whole, cut


@pytest.mark.parametrize(
    ("tail", "opened"),
    [
        ("<|im_start|>assistant\n<think>\n", True),  # Qwen3 thinking, DeepSeek-R1 style
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # enable_thinking=False
        ("<|im_start|>assistant\n", False),
        ("<think>a</think> earlier turn <|im_start|>assistant\n<think>", True),
    ],
)
def test_a_prompt_that_opens_the_block(tail: str, opened: bool) -> None:
    assert opened_in_prompt(tail, TAGS["qwen3"]) is opened


# -- gpt-oss harmony ---------------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any] | None] = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}}},
    "get_time": None,
}
ANSWER = (
    "<|channel|>analysis<|message|>User asks the capital. Answer: Paris.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The capital of France is Paris."
)
CALL = (
    "<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant<|channel|>"
    'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
)
RECIPIENT_FIRST = (
    "<|channel|>analysis<|message|>Time in UTC.<|end|><|start|>assistant to=functions.get_time"
    '<|channel|>commentary json<|message|>{"tz": "UTC"}'
)
PREAMBLE = (
    "<|channel|>commentary<|message|>Let me look that up.<|end|><|start|>assistant<|channel|>"
    'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}'
)
HARMONY = [
    (ANSWER, "User asks the capital. Answer: Paris.", "The capital of France is Paris.", []),
    (CALL, "Need the weather tool.", "", [("get_weather", {"city": "Paris"})]),
    (RECIPIENT_FIRST, "Time in UTC.", "", [("get_time", {"tz": "UTC"})]),
    (PREAMBLE, "", "Let me look that up.", [("get_weather", {"city": "Oslo"})]),
    (
        "Plain text from a model ignoring its format.",
        "",
        "Plain text from a model ignoring its format.",
        [],
    ),
    (
        "<|channel|>commentary to=functions.unknown <|constrain|>json<|message|>{}",
        "",
        "{}",
        [],
    ),  # not one of the request's functions: its text is content
    (
        "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{not json",
        "",
        "{not json",
        [],
    ),
    *(  # nested deeper than a request body may be (MAX_JSON_DEPTH), or than Python parses
        (
            f"<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{deep}",
            "",
            deep,
            [],
        )
        for deep in ('{"tz": ' + "[" * n + "]" * n + "}" for n in (MAX_JSON_DEPTH, 1500))
    ),
]


def harmony(pieces: list[str]) -> tuple[str, str, list[tuple[str, Any]]]:
    parser = HarmonyParser(SCHEMAS)
    reasoning = content = ""
    calls: dict[int, list[str]] = {}
    for delta in [*(parser.feed(p) for p in pieces), parser.finish()]:
        reasoning, content = reasoning + delta.reasoning, content + delta.content
        for call in delta.calls:
            entry = calls.setdefault(call.index, ["", ""])
            entry[0] += call.name or ""
            entry[1] += call.arguments
    return reasoning, content, [(name, json.loads(args)) for name, args in calls.values()]


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), HARMONY)
def test_harmony_channels(
    text: str, reasoning: str, content: str, calls: list[tuple[str, Any]]
) -> None:
    assert harmony([text]) == (reasoning, content, calls)
    for cut in range(1, len(text)):
        assert harmony([text[:cut], text[cut:]]) == (reasoning, content, calls), cut
    assert harmony(list(text)) == (reasoning, content, calls)


def test_harmony_without_tools_still_splits_reasoning() -> None:
    output = ChoiceOutput(None, False, {}, tool_format="harmony")
    message = collected_message(output, ANSWER)
    assert message == {
        "content": "The capital of France is Paris.",
        "reasoning_content": "User asks the capital. Answer: Paris.",
        "reasoning": "User asks the capital. Answer: Paris.",
    }


def test_harmony_streams_reasoning_before_the_answer_ends() -> None:
    parser = HarmonyParser({})
    first = parser.feed("<|channel|>analysis<|message|>Thinking so")
    assert first.reasoning == "Thinking so" and not first.content
    assert parser.feed(" far<|e").reasoning == " far"  # a partial terminator is held back
    assert parser.feed("nd|><|start|>assistant<|channel|>final<|message|>Hi").content == "Hi"


def test_harmony_keeps_reasoning_where_it_was_written_however_split() -> None:
    """Reasoning after a preamble (analysis, commentary to the user, analysis again, a call)
    stays after it when the output comes whole, as it does streamed: Responses' reasoning and
    message items, and Messages' thinking and text blocks, follow this order (the whole
    output's reasoning was put first, in one run)."""
    text = PREAMBLE.replace(
        "<|start|>assistant<|channel|>commentary to=",
        "<|start|>assistant<|channel|>analysis<|message|>Oslo, then.<|end|>"
        "<|start|>assistant<|channel|>commentary to=",
    )

    def order(pieces: list[str]) -> list[str]:
        output = ChoiceOutput(None, False, SCHEMAS, tool_format="harmony")
        kinds: list[str] = []
        for delta in [*(d for p in pieces for d in output.feed(p)), *output.finish()]:
            kind = next(iter(delta))
            if kinds[-1:] != [kind]:
                kinds.append(kind)
        return kinds

    assert order([text]) == ["content", "reasoning_content", "tool_calls"]
    assert order(list(text)) == order([text])
