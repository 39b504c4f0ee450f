"""Each family's tool-call format against mlx-lm 0.32's own parsers (the reference): the format
chosen from a chat template is the one mlx-lm chooses; on the same output text, our streaming
parser gives the calls (names, arguments, the model's ids) and the content mlx-lm's server gives
(its text state machine over the format's markers, then the format's `parse_tool_call`); fed in
two pieces split at every position, or one character at a time, it gives the same as whole.

mlx-lm's server sends whitespace between calls as content; ours sends none: content is compared
with whitespace runs collapsed and ends trimmed.
"""

from __future__ import annotations

import importlib
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.llm.chat_formats import CALL_ENDS, SECTIONS, think_tags, tool_format
from server.body import MAX_JSON_DEPTH
from server.tool_formats import call_parser
from server.tool_formats.calls import ParsedCall
from server.tool_formats.sections import section_calls
from tests.helpers import late_over_early_cost

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "hours": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["city"],
}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
SCHEMAS: dict[str, dict[str, Any] | None] = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in SCHEMAS.items()]

# Outputs as each family writes them (their chat templates' own rendering of assistant calls).
OUTPUTS = {
    "json_tools": [
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"days": 3}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": '
        '"Europe/Paris"}}\n</tool_call>',
    ],
    "qwen3_coder": [
        "I'll look that up.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n"
        "</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
        "<parameter=hours>\n[9, 12]\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
        "<function=get_time>\n<parameter=tz>\nEurope/Paris\n</parameter>\n</function>\n"
        "</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nline one\nline two\n</parameter>\n"
        "</function>\n</tool_call>\nDone.",
    ],
    "glm47": [
        "Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        "<tool_call>get_time</tool_call>",
        "<tool_call>get_time<arg_key>tz</arg_key><arg_value>Europe/Paris</arg_value></tool_call>"
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>42</arg_value>"
        "<arg_key>hours</arg_key><arg_value>[1, 2]</arg_value></tool_call>",
    ],
    "minimax_m2": [
        'On it.\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris'
        '</parameter>\n<parameter name="days">3</parameter>\n<parameter name="metric">false'
        '</parameter>\n</invoke>\n<invoke name="get_time">\n<parameter name="tz">Europe/Paris'
        "</parameter>\n</invoke>\n</minimax:tool_call>",
    ],
    "kimi_k2": [
        "Let me check both.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris", "days": 3}<|tool_call_end|>'
        "<|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>"
        '{"tz": "Europe/Paris"}<|tool_call_end|><|tool_calls_section_end|>',
    ],
    "kimi_k3": [
        '<|open|>tools<|sep|><|open|>call tool="get_weather" index="1"<|sep|>'
        '<|open|>argument key="city" type="string"<|sep|>Paris<|close|>argument<|sep|>'
        '<|open|>argument key="days" type="integer"<|sep|>3<|close|>argument<|sep|>'
        '<|close|>call<|sep|><|open|>call tool="get_time" index="2"<|sep|>'
        '<|open|>json type="object"<|sep|>{"tz": "UTC"}<|close|>json<|sep|><|close|>call<|sep|>'
        "<|close|>tools<|sep|>",
    ],
    "gemma4": [
        'Checking.<|tool_call>call:get_weather{city:<|"|>Paris, {France}<|"|>,days:3,'
        "hours:[9,12]}<tool_call|>",
        '<|tool_call>call:get_time{tz:<|"|>UTC<|"|>}<tool_call|><|tool_call>call:get_weather'
        '{city:<|"|>Oslo<|"|>}<tool_call|>',
    ],
    "function_gemma": [
        "<start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}"
        "<end_function_call>",
    ],
    "pythonic": [
        '<|tool_call_start|>[get_weather(city="Paris", days=3, metric=true), '
        'get_time(tz="Europe/Paris")]<|tool_call_end|>Checking both.',
        "<|tool_call_start|>[get_weather(city='Oslo', hours=[1, 2])]<|tool_call_end|>",
    ],
    "mistral": [
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, '
        '{"name": "get_time", "arguments": {"tz": "UTC"}, "id": "abc123XYZ"}]',
        'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}[TOOL_CALLS]get_time'
        '[ARGS]{"tz": "UTC"}',
    ],
    "longcat": [
        "<longcat_tool_call>get_weather\n<longcat_arg_key>city</longcat_arg_key>\n"
        "<longcat_arg_value>Paris</longcat_arg_value>\n<longcat_arg_key>days</longcat_arg_key>\n"
        "<longcat_arg_value>3</longcat_arg_value>\n</longcat_tool_call>",
    ],
    "minicpm5": [
        'Checking.<function name="get_weather"><param name="city">Paris</param>'
        '<param name="days">3</param></function>\n<function name="get_time">'
        '<param name="tz"><![CDATA[Europe/Paris <UTC+1>]]></param></function>',
    ],
}
CASES = [(fmt, text) for fmt, texts in OUTPUTS.items() for text in texts]


def words(text: str) -> str:
    return " ".join(text.split())


def reference(fmt: str, text: str) -> tuple[str, list[tuple[str, Any, str | None]]]:
    """What mlx-lm's server makes of `text`: its state machine splits normal from tool text
    at the format's markers, and each tool text goes through the format's parser."""
    from mlx_lm.generate import TextStateMachine

    module = importlib.import_module(f"mlx_lm.tool_parsers.{fmt}")
    start, end = module.tool_call_start, module.tool_call_end
    machine = TextStateMachine(
        {"normal": [(start, "tool")], "tool": [(end, "normal")] if end else []}
    )
    state, segments = TextStateMachine.split(machine.make_state("normal"), text)
    segments.append((state[0], state[3]))  # what is still buffered at the end
    content, calls = "", []
    # mlx-lm's server appends each tool text when the state leaves "tool" (or at the end).
    merged: list[str] = []
    previous = None
    for name, piece in segments:
        if name == "normal":
            content += piece
        elif name == "tool":
            if previous == "tool":
                merged[-1] += piece
            else:
                merged.append(piece)
        previous = name
    for tool_text in merged:
        parsed = module.parse_tool_call(tool_text, TOOLS)
        for call in parsed if isinstance(parsed, list) else [parsed]:
            calls.append((call["name"], call["arguments"], call.get("id")))
    return words(content), calls


def ours(fmt: str, pieces: list[str]) -> tuple[str, list[tuple[str, Any, str | None]]]:
    parser = call_parser(fmt, SCHEMAS)
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    for delta in [*(parser.feed(p) for p in pieces), parser.finish()]:
        content += delta.content
        for call in delta.calls:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            if call.id is not None:
                assert entry["id"] is None, "a call's id and name come once"
                entry["id"], entry["name"] = call.id, call.name
            entry["arguments"] += call.arguments
    assert [c.arguments for c in parser.calls] == [e["arguments"] for e in calls.values()]
    return words(content), [
        (e["name"], json.loads(e["arguments"]), e["id"]) for e in calls.values()
    ]


def model_ids(calls: list[tuple[str, Any, str | None]]) -> list[tuple[str, Any, str | None]]:
    """Ours get fresh `call_…` ids where the model wrote none (mlx-lm: uuids, not returned)."""
    return [(n, a, None if i is None or i.startswith("call_") else i) for n, a, i in calls]


@pytest.mark.parametrize(("fmt", "text"), CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_same_calls_and_content_as_mlx_lm(fmt: str, text: str) -> None:
    expected = reference(fmt, text)
    assert expected[1], "each sample holds calls"
    content, calls = ours(fmt, [text])
    assert (content, model_ids(calls)) == expected


@pytest.mark.parametrize(("fmt", "text"), CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_any_split_gives_the_whole_result(fmt: str, text: str) -> None:
    whole = ours(fmt, [text])
    for cut in range(1, len(text)):
        assert model_ids(ours(fmt, [text[:cut], text[cut:]])[1]) == model_ids(whole[1]), cut
        assert ours(fmt, [text[:cut], text[cut:]])[0] == whole[0], cut
    assert model_ids(ours(fmt, list(text))[1]) == model_ids(whole[1])


def sequence(fmt: str, pieces: list[str]) -> list[str]:
    """The output as the order of its parts: "text" runs (whitespace alone is none) and calls by
    index, each run once."""
    parser = call_parser(fmt, SCHEMAS)
    order: list[str] = []
    for delta in [*(parser.feed(p) for p in pieces), parser.finish()]:
        for piece in delta.pieces:
            part = "text" if isinstance(piece, str) else f"call {piece.index}"
            if (part != "text" or piece.strip()) and order[-1:] != [part]:  # type: ignore[union-attr]
                order.append(part)
    return order


@pytest.mark.parametrize(("fmt", "text"), CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_text_and_calls_keep_their_order_however_split(fmt: str, text: str) -> None:
    """A text after a call stays after it, whether the output comes whole (non-streamed) or
    a character at a time: Responses items and Messages blocks follow this order."""
    whole = sequence(fmt, [text])
    if text.endswith(("Done.", "Checking both.")):  # the samples with text after their calls
        assert whole[-1] == "text" and whole[-2].startswith("call"), whole
    assert whole == sequence(fmt, list(text))
    for cut in range(1, len(text), 7):
        assert sequence(fmt, [text[:cut], text[cut:]]) == whole, cut


def streamed_content(fmt: str, pieces: list[str]) -> str:
    parser = call_parser(fmt, SCHEMAS)
    return "".join(delta.content for delta in [*map(parser.feed, pieces), parser.finish()])


@pytest.mark.parametrize("fmt", sorted(f for f in OUTPUTS if SECTIONS[f][1]))
def test_whitespace_ending_a_text_after_a_call_is_content_however_split(fmt: str) -> None:
    """Only whitespace right after a call is none: where the text after it came a character at
    a time, the whitespace ending it was held as if right after the call, then dropped."""
    text = next(t for t in OUTPUTS[fmt] if not t.endswith(("Done.", "Checking both.")))
    text += "Done. \n"
    whole = streamed_content(fmt, [text])
    assert whole.endswith("Done. \n")
    assert streamed_content(fmt, list(text)) == whole


@pytest.mark.parametrize(
    ("fmt", "text"),
    [(fmt, text) for fmt, text in CASES if fmt in CALL_ENDS],
    ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES) if f in CALL_ENDS],
)
def test_an_output_stopped_at_the_first_calls_end_holds_that_call(fmt: str, text: str) -> None:
    """`parallel_tool_calls: false` stops the output just after `CALL_ENDS`' marker: what is
    left is the first call, whole (a section cut open after it is parsed as it stands)."""
    end = CALL_ENDS[fmt]
    stopped = text[: text.index(end) + len(end)]
    first = model_ids(ours(fmt, [text])[1])[0]
    assert model_ids(ours(fmt, [stopped])[1]) == [first]


@pytest.mark.parametrize("fmt", sorted(set(SECTIONS) - {"json_tools"}))
def test_a_section_that_does_not_parse_is_content(fmt: str) -> None:
    start, end = SECTIONS[fmt]
    text = f"Before {start}not a call at all{end}"
    assert ours(fmt, [text]) == (words(text), [])


def test_markers_held_back_until_known() -> None:
    parser = call_parser("qwen3_coder", SCHEMAS)
    assert parser.feed("Hi <tool_").content == "Hi "
    assert parser.feed("tip>").content == "<tool_tip>"


# -- choosing the format: mlx-lm's rules on the families' template markers --------------------

TEMPLATES = {
    "minimax_m2": "{{ '<minimax:tool_call>' }}<invoke name=",
    "gemma4": "{{ '<|tool_call>' }}call:{{ name }}{{ '<tool_call|>' }}",
    "function_gemma": "<start_function_call>call:",
    "longcat": "<longcat_tool_call>",
    "glm47": "<tool_call>{{ tc.name }}<arg_key>{{ k }}</arg_key>",
    "pythonic": "<|tool_call_start|>[",
    "qwen3_coder": "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}",
    "kimi_k2": "<|tool_calls_section_begin|>",
    "minicpm5": '<function name="{{ n }}"><param name="{{ k }}">',
    "mistral": "{%- if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
    "json_tools": '<tool_call>\\n{"name": "{{ tool_call.name }}"',
}


class Tokenizer(SimpleNamespace):
    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


@pytest.mark.parametrize(("fmt", "template"), TEMPLATES.items())
def test_format_from_template_is_mlx_lms(fmt: str, template: str) -> None:
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    assert _infer_tool_parser(Tokenizer(chat_template=template, vocab={})) == fmt
    assert tool_format(template, {}) == fmt


@pytest.mark.parametrize(
    ("vocab", "fmt"),
    [
        ({"<|open|>": 1, "<|close|>": 2, "<|sep|>": 3, "<|end_of_msg|>": 4}, "kimi_k3"),
        ({"<|tool_call_start|>": 1, "<|tool_call_end|>": 2}, "pythonic"),
    ],
)
def test_format_from_vocabulary_is_mlx_lms(vocab: dict[str, int], fmt: str) -> None:
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    assert _infer_tool_parser(Tokenizer(chat_template="{{ messages }}", vocab=vocab)) == fmt
    assert tool_format("{{ messages }}", vocab) == fmt


def test_formats_mlx_lm_has_no_parser_for() -> None:
    harmony = "<|start|>assistant<|channel|>final<|message|>{{ content }}<|end|>"
    llama = '{%- if tools %}{"name": "...", "parameters": ...}<|python_tag|>{% endif %}'
    assert tool_format(harmony, {}) == "harmony"
    assert tool_format(llama, {}) == "llama3"
    assert tool_format("{{ messages }}", {}) == "json_tools"  # the generic tool prompt's


def test_the_checkpoints_choice_wins() -> None:
    assert tool_format(TEMPLATES["qwen3_coder"], {}, configured="laguna") == "glm47"
    assert tool_format(TEMPLATES["qwen3_coder"], {}, configured="unknown") == "qwen3_coder"


def test_think_tags_by_mlx_lms_rules() -> None:
    assert think_tags(None, {"<think>": 1, "</think>": 2}) == ("<think>", "</think>")
    longcat = {"<longcat_think>": 1, "</longcat_think>": 2}
    assert think_tags(None, longcat) == ("<longcat_think>", "</longcat_think>")
    assert think_tags(None, {"<|channel>": 1, "<channel|>": 2}) == (
        "<|channel>thought",
        "<channel|>",
    )
    assert think_tags("{{ '<think>' }}", {}) == ("<think>", "</think>")
    assert think_tags("{{ messages }}", {}) is None


def test_a_models_file_names_the_format(tmp_path: Any) -> None:
    """`tool_format` in a models file wins over the checkpoint's; an unknown name is refused
    at start-up with the names it may be."""
    from engines.llm.chat_formats import model_formats
    from server.config import ConfigError, load_models_file

    tokenizer = Tokenizer(
        chat_template=TEMPLATES["json_tools"],
        vocab={},
        init_kwargs={"tool_parser_type": "json_tools"},
    )
    assert model_formats(tokenizer, False) == ("json_tools", None)
    assert model_formats(tokenizer, False, "qwen3_coder") == ("qwen3_coder", None)
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "m"\nsource = "x"\ntool_format = "qwen3_coder"\n')
    assert load_models_file(path).models[0].tool_format == "qwen3_coder"
    path.write_text('[[models]]\nname = "m"\nsource = "x"\ntool_format = "hermes"\n')
    with pytest.raises(ConfigError, match=r"unknown tool_format 'hermes'; one of: .*qwen3_coder"):
        load_models_file(path)


# -- generated calls: any arguments, rendered as each family's template writes them -------------

CITY: st.SearchStrategy[Any] = st.text(
    st.characters(blacklist_characters="<>\r", blacklist_categories=["Cs"])
)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "days": st.integers(-(10**6), 10**6),
    "metric": st.booleans(),
    "hours": st.lists(st.integers(0, 23), max_size=4),
}
ARGUMENTS = st.fixed_dictionaries({"city": CITY}, optional=OPTIONAL)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _gemma4(value: Any) -> str:
    if isinstance(value, str):
        return f'<|"|>{value}<|"|>'
    return json.dumps(value).replace(" ", "")


RENDERERS = {
    "qwen3_coder": lambda a: (
        "<tool_call>\n<function=get_weather>\n"
        + "".join(f"<parameter={k}>\n{_text(v)}\n</parameter>\n" for k, v in a.items())
        + "</function>\n</tool_call>"
    ),
    "glm47": lambda a: (
        "<tool_call>get_weather\n"
        + "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_text(v)}</arg_value>\n" for k, v in a.items()
        )
        + "</tool_call>"
    ),
    "minimax_m2": lambda a: (
        '<minimax:tool_call>\n<invoke name="get_weather">\n'
        + "".join(f'<parameter name="{k}">{_text(v)}</parameter>\n' for k, v in a.items())
        + "</invoke>\n</minimax:tool_call>"
    ),
    "kimi_k2": lambda a: (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        f"<|tool_call_argument_begin|>{json.dumps(a)}<|tool_call_end|><|tool_calls_section_end|>"
    ),
    "mistral": lambda a: f"[TOOL_CALLS]get_weather[ARGS]{json.dumps(a)}",
    "gemma4": lambda a: (
        "<|tool_call>call:get_weather{"
        + ",".join(f"{k}:{_gemma4(v)}" for k, v in a.items())
        + "}<tool_call|>"
    ),
    "json_tools": lambda a: (
        f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(a)}}}\n</tool_call>'
    ),
}


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
@settings(max_examples=30, deadline=None)
@given(arguments=ARGUMENTS, cut=st.floats(0, 1))
def test_generated_calls_as_mlx_lm_reads_them(fmt: str, arguments: Any, cut: float) -> None:
    text = "Checking. " + RENDERERS[fmt](arguments)
    expected = reference(fmt, text)
    at = int(cut * len(text))
    for pieces in ([text], [text[:at], text[at:]]):
        content, calls = ours(fmt, pieces)
        assert (content, model_ids(calls)) == expected


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_OUTPUTS = {
    "qwen3_coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=hours>\n{deep}\n</parameter>\n</function>\n</tool_call>",
    "kimi_k2": "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{{"hours": {deep}}}<|tool_call_end|><|tool_calls_section_end|>',
}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1500])  # a body's limit; Python's
@pytest.mark.parametrize("fmt", DEEP_OUTPUTS)
def test_arguments_nested_too_deeply_are_text(fmt: str, depth: int) -> None:
    """No call, the section as content (nothing raised: it was a RecursionError, a 500)."""
    output = DEEP_OUTPUTS[fmt].format(deep=nested(depth))
    content, calls = ours(fmt, [output])
    assert calls == [] and content == words(output)


LONG_CODE = "function f() { return {a: 1}; }\n" * 5000
LONG_SECTION = {
    "section": (
        "qwen3_coder",
        "<tool_call>\n<function=write_file>\n<parameter=content>\n" + LONG_CODE,
    ),
    "whitespace after a call": (
        "qwen3_coder",
        "<tool_call>\n<function=write_file>\n</function>\n</tool_call>" + "\n" * 160_000,
    ),
    "whitespace before anything": ("qwen3_coder", "\n" * 160_000),
    "harmony call": (
        "harmony",
        "<|channel|>commentary to=functions.write_file <|constrain|>json<|message|>"
        + json.dumps({"content": LONG_CODE}),
    ),
}


@pytest.mark.parametrize("cut", [False, True])
@pytest.mark.parametrize("run", ["x", "-", "é", "7"])
def test_a_mistral_section_is_read_in_linear_time(run: str, cut: bool) -> None:
    """A section that is no JSON is searched for `NAME[ARGS]`: tried at every character of a
    long run of name characters, each try reading to the run's end, 20 KB took seconds (on
    the event loop, or the engine thread for the one-call end watch); a millisecond now."""
    body = '[{"name": "get_weather", "arguments": {"city": "' + run * 20_000
    started = time.perf_counter()
    assert section_calls("mistral", body, TOOLS, cut) is None
    assert section_calls("mistral", f"{run * 20_000} get_time[ARGS]{{}}", TOOLS, cut) == [
        ParsedCall("get_time", {})
    ]
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "body",
    [
        "x" * 20_000,  # one long word: no name, tried at each of its characters
        "name=" * 4_000,
        '"get_time"></param>' + '<param name="tz">UTC' * 4_000,  # unclosed parameters
    ],
    ids=["word", "name=", "parameters"],
)
def test_a_minicpm5_section_is_read_in_linear_time(body: str) -> None:
    """Each was quadratic (20 KB: seconds), on the event loop or the engine thread."""
    started = time.perf_counter()
    calls = section_calls("minicpm5", body, TOOLS, False)
    assert time.perf_counter() - started < 0.5
    assert calls == ([ParsedCall("get_time", {})] if body.startswith('"') else None)


@pytest.mark.parametrize("fmt, text", LONG_SECTION.values(), ids=LONG_SECTION.keys())
def test_a_piece_costs_no_more_late_in_a_long_output(fmt: str, text: str) -> None:
    """The parsers run on the event loop: each piece of a long section (or harmony call)
    copied the buffer (+= on an attribute) and searched the end marker from the section's
    start (200 KB in 4-character pieces took 1.4 s; harmony's 6.5 s), and whitespace held
    after a call or before the first character was read again each piece. The last pieces now
    cost what the first do (best of three runs: the ratio is ~1 read incrementally, 10 and
    more read again each piece)."""
    assert late_over_early_cost(lambda: call_parser(fmt, {"write_file": None}).feed, text) < 3
