"""Forced tool calls and bounded numbers on tiny random weights with the packaged models' real
tokenizers (SmolLM2's: no tool support in its template, the generic prompt; Qwen2.5-Coder's:
`<tool_call>`/`</tool_call>` are single added tokens), through the real server and the SDK.

Whatever the weights, a forced call comes back as `tool_calls` with schema-valid arguments and
no content, streamed and not, alone and in a batch with unconstrained rows. The Qwen tokenizer
comes from the imported Qwen2.5-Coder store entry, which needs the 491 MB package: opt-in
(MLXD_OPTIN=1; CI sets it). The tiny model reuses the entry's tokenizer files only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from openai import AsyncOpenAI

from engines.llm.call_grammars import GRAMMAR_FORMATS
from engines.llm.constrain import lark_grammar
from engines.llm.engine import LLMEngine
from engines.pool import EnginePool
from engines.types import ChatLimits, GenerationRequest, SamplingParams
from engines.weights.checkpoint import DEQUANTIZE_ON_LOAD
from engines.weights.embedded import (
    CATALOG,
    GEMMA3_270M,
    QWEN_CODER,
    SMOLLM2,
    ensure_embedded_llm,
)
from engines.weights.store import COMPLETE_MARKER, ModelStore
from server.app import create_app
from server.first_call import FirstCallEnd
from server.settings import Settings
from tests.helpers import PROMPT, run
from tests.servers import serve

ARGUMENTS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer"},  # unbounded: the digit bound must close it
        "temperature": {"type": "number"},
    },
    "required": ["city", "days", "temperature"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": ARGUMENTS}}
FORCED: list[Any] = [{"type": "function", "function": {"name": "get_weather"}}, "required"]


def random_weights_dir(source: Path, directory: Path) -> Path:
    """A 2-layer random model shaped like `source`'s vocabulary, with `source`'s tokenizer."""
    config = json.loads((source / "config.json").read_text())
    for key in ("quantization", DEQUANTIZE_ON_LOAD):  # the random weights are plain float32
        config.pop(key, None)
    tiny = {
        **config,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "tie_word_embeddings": False,
    }
    if tiny["model_type"] == "qwen2":
        from mlx_lm.models.qwen2 import Model, ModelArgs
    else:
        from mlx_lm.models.llama import Model, ModelArgs  # type: ignore[assignment]
    mx.random.seed(7)
    model = Model(ModelArgs.from_dict(tiny))
    mx.eval(model.parameters())
    directory.mkdir(parents=True)
    mx.save_safetensors(
        str(directory / "model.safetensors"), dict(tree_flatten(model.parameters()))
    )
    (directory / "config.json").write_text(json.dumps(tiny))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    (directory / COMPLETE_MARKER).write_text("random weights, real tokenizer\n")
    return directory


def store_entry(name: str) -> Path:
    store = ModelStore(Settings().home)
    if name in (QWEN_CODER.name, GEMMA3_270M.name):
        return ensure_embedded_llm(store, dequantize=True, model=CATALOG[name])
    if not store.has(name):
        pytest.fail(f"{name} is not in {store.home}; run `make install` first")
    return store.path_for(name)


@pytest.fixture(
    params=[SMOLLM2.name, pytest.param(QWEN_CODER.name, marks=pytest.mark.optin)],
    scope="module",
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    source = store_entry(request.param)
    directory = random_weights_dir(source, tmp_path_factory.mktemp("real-tok") / "model")
    engine = LLMEngine("tiny", directory)
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        yield url
    shutil.rmtree(directory.parent)  # ~100 MB of random weights: disk is short on CI machines


async def forced_call(client: AsyncOpenAI, tool_choice: Any, seed: int, stream: bool) -> None:
    request: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "tools": [TOOL],
        "tool_choice": tool_choice,
        "parallel_tool_calls": False,
        "temperature": 1.0,
        "seed": seed,
        "max_tokens": 160,
    }
    if stream:
        content, names, arguments, reasons = "", [], "", []
        async for chunk in await client.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                content += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    assert call.function is not None
                    names += [call.function.name] if call.function.name else []
                    arguments += call.function.arguments or ""
                reasons += [choice.finish_reason] if choice.finish_reason else []
    else:
        reply = (await client.chat.completions.create(**request)).choices[0]
        content, reasons = reply.message.content or "", [reply.finish_reason]
        calls = reply.message.tool_calls or []
        names = [call.function.name for call in calls]  # type: ignore[union-attr]
        arguments = "".join(call.function.arguments for call in calls)  # type: ignore[union-attr]
    assert (content, names, reasons) == ("", ["get_weather"], ["tool_calls"]), arguments
    document = json.loads(arguments)
    jsonschema.validate(document, ARGUMENTS)
    assert abs(document["days"]) < 10**16


async def free_text(client: AsyncOpenAI, seed: int) -> None:
    reply = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": f"Tell me a story, {seed}."}],
        temperature=1.0,
        seed=seed,
        max_tokens=40,
    )
    assert reply.choices[0].message.tool_calls is None


async def test_forced_calls_in_a_mixed_batch(served: str) -> None:
    client = AsyncOpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=300)
    async with client:
        await asyncio.gather(
            *(
                forced_call(client, FORCED[seed % 2], seed, stream=seed % 3 == 0)
                for seed in range(6)
            ),
            *(free_text(client, seed) for seed in range(3)),
        )


async def test_json_schema_numbers_close(served: str) -> None:
    """A free `number` and `integer`: every seed's object closes (digits bounded)."""
    client = AsyncOpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=300)
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": ARGUMENTS, "strict": True},
    }
    async with client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "Weather as JSON."}],
                    response_format=response_format,
                    temperature=1.0,
                    seed=seed,
                    max_tokens=160,
                )
                for seed in range(4)
            )
        )
    for reply in replies:
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), ARGUMENTS)


# -- each family's own format, forced, on SmolLM2's real tokenizer -----------------------------
# A chat template naming a family's markup makes the engine choose that format (mlx-lm's rules);
# gpt-oss's and Kimi's markers are special tokens added to the vocabulary, so the grammar names
# them by id and the engine must keep them in the text it emits (it skips special tokens).

PYTHONIC_TOKENS = ("<|tool_call_start|>", "<|tool_call_end|>")
GEMMA4_TOKENS = ("<|tool_call>", "<tool_call|>", '<|"|>')
HARMONY_TOKENS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>")
KIMI_TOKENS = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_end|>",
    "<|tool_call_argument_begin|>",
)
CHATML = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
)
FAMILIES = {
    "qwen3_coder": (CHATML + "{# <tool_call>\n<function= #}<|im_start|>assistant\n", ()),
    "glm47": (CHATML + "{# <arg_key> #}<|im_start|>assistant\n", ()),
    "minimax_m2": (CHATML + "{# <minimax:tool_call> #}<|im_start|>assistant\n", ()),
    "kimi_k2": (CHATML + "{# <|tool_calls_section_begin|> #}<|im_start|>assistant\n", KIMI_TOKENS),
    "json_tools": (CHATML + "{# <tool_call> tool_call.name #}<|im_start|>assistant\n", ()),
    "pythonic": (CHATML + "{# <|tool_call_start|> #}<|im_start|>assistant\n", PYTHONIC_TOKENS),
    "gemma4": (CHATML + "{# <|tool_call> <tool_call|> #}<|im_start|>assistant\n", GEMMA4_TOKENS),
    "harmony": (CHATML + "{# <|channel|><|message|> #}<|start|>assistant", HARMONY_TOKENS),
}


def with_special_tokens(directory: Path, tokens: tuple[str, ...]) -> None:
    """Add `tokens` to the tokenizer as special tokens (and to the model's vocabulary)."""
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    config = json.loads((directory / "config.json").read_text())
    first = config["vocab_size"]
    tokenizer["added_tokens"] += [
        {"id": first + i, "content": token, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, token in enumerate(tokens)
    ]  # fmt: skip
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": first + 16}))


@pytest.fixture(
    params=[
        *((fmt, SMOLLM2.name) for fmt in sorted(FAMILIES) if fmt != "json_tools"),
        # Qwen's <tool_call> is one (non-special) token: named by id in the grammar.
        pytest.param(("qwen3_coder", QWEN_CODER.name), marks=pytest.mark.optin),
        # gemma3's SentencePiece vocabulary, rebuilt from its GGUF by the importer.
        pytest.param(("json_tools", GEMMA3_270M.name), marks=pytest.mark.optin),
    ],
    ids=lambda param: "-".join(param),
    scope="module",
)
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    fmt, tokenizer = request.param
    template, tokens = FAMILIES[fmt]
    base = tmp_path_factory.mktemp(f"family-{fmt}")
    source = base / "source"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(store_entry(tokenizer) / name, source / name)
    if tokenizer == GEMMA3_270M.name:  # a llama-shaped tiny model over gemma3's vocabulary
        config = json.loads((store_entry(SMOLLM2.name) / "config.json").read_text())
        gemma = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(
            json.dumps({**config, "vocab_size": gemma["vocab_size"], "eos_token_id": 106})
        )
    if tokens:
        with_special_tokens(source, tokens)
    directory = random_weights_dir(source, base / "model")
    engine = LLMEngine("tiny", directory, limits=ChatLimits(chat_template=template))
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        assert engine.info is not None and engine.info.tool_format == fmt
        yield fmt, url
    shutil.rmtree(base)  # up to ~200 MB of random weights: disk is short on CI machines


async def test_forced_calls_in_each_familys_format(family: tuple[str, str]) -> None:
    """Whatever the weights, the forced call is written in the family's markup (special
    markers included), read back by its parser, and schema-valid, streamed and not."""
    _, url = family
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    async with client:
        await asyncio.gather(
            *(
                forced_call(client, FORCED[seed % 2], seed, stream=seed % 2 == 0)
                for seed in range(4)
            )
        )


# What each family's chat template renders for a call of get_weather (how the model was
# trained to write it): its forced-call grammar accepts exactly that text, token by token.
RENDERED = {
    "json_tools": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, '
    '"temperature": 21.5}}\n</tool_call>',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, '
    '"temperature": 21.5}}]',
    "mistral ([ARGS])": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3, '
    '"temperature": 21.5}',
    "llama3": '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3, '
    '"temperature": 21.5}}',
    "qwen3_coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n<parameter=temperature>\n21.5\n</parameter>\n"
    "</function>\n</tool_call>",
    "glm47": "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
    "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>temperature</arg_key>\n"
    "<arg_value>21.5</arg_value>\n</tool_call>",
    "minimax_m2": '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris'
    '</parameter>\n<parameter name="days">3</parameter>\n<parameter name="temperature">21.5'
    "</parameter>\n</invoke>\n</minimax:tool_call>",
    "glm47 (4.7)": "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
    "<arg_key>days</arg_key><arg_value>3</arg_value><arg_key>temperature</arg_key>"
    "<arg_value>21.5</arg_value></tool_call>",
    "kimi_k2": "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Paris", "days": 3, "temperature": 21.5}'
    "<|tool_call_end|><|tool_calls_section_end|>",
    "pythonic": '<|tool_call_start|>[get_weather(city="Paris", days=3, temperature=21.5)]'
    "<|tool_call_end|>",
    "gemma4": '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3,temperature:21.5}'
    "<tool_call|>",
    "harmony": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"city": "Paris", "days": 3, "temperature": 21.5}',
}


@pytest.fixture(scope="module")
def grammar_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """SmolLM2's tokenizer with harmony's and Kimi's markers added, and its grammar compiler."""
    from mlx_lm.tokenizer_utils import load

    from engines.llm.constrain import GrammarCompiler

    source = tmp_path_factory.mktemp("grammar-tok")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(store_entry(SMOLLM2.name) / name, source / name)
    with_special_tokens(source, HARMONY_TOKENS + KIMI_TOKENS + PYTHONIC_TOKENS + GEMMA4_TOKENS)
    tokenizer = load(source)
    return tokenizer, GrammarCompiler(tokenizer._tokenizer, 49152 + 16, [2])


@pytest.mark.parametrize("family", sorted(RENDERED))
def test_forced_grammar_accepts_the_familys_rendering(
    family: str, grammar_tokenizer: tuple[Any, Any]
) -> None:
    import llguidance

    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    fmt = family.split()[0]
    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags(fmt) if tag in vocab}
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    tokens = tokenizer.encode(RENDERED[family], add_special_tokens=False)
    for forced, accepted in (("get_weather", True), ("get_time", False)):
        grammar = tool_call_grammar([TOOL, other], forced, False, fmt, tags)
        compiler.check(grammar, "tool_choice")
        matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
        consumed = all(matcher.consume_token(token) for token in tokens)
        assert (consumed and matcher.is_accepting()) is accepted, (fmt, forced)


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string"}},
    "required": ["summary"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("family", sorted(RENDERED))
def test_calls_or_an_answer_accepts_both(family: str, grammar_tokenizer: tuple[Any, Any]) -> None:
    """`response_format` beside tools the model may call: the grammar takes the family's call
    or a JSON answer under the schema, and nothing else (harmony keeps JSON alone)."""
    import llguidance

    from engines.llm.call_grammars import answers_beside_calls, grammar_tags, tool_call_grammar

    fmt = family.split()[0]
    if not answers_beside_calls(fmt, [TOOL]):
        assert fmt == "harmony"
        return
    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags(fmt) if tag in vocab}
    grammar = tool_call_grammar([TOOL], None, True, fmt, tags, answer_schema=ANSWER_SCHEMA)
    compiler.check(grammar, "response_format")
    outputs = {
        RENDERED[family]: True,
        '{"summary": "sunny"}': True,
        '{"summary": 3}': False,
        "It is sunny.": False,
    }
    for text, accepted in outputs.items():
        matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
        tokens = tokenizer.encode(text, add_special_tokens=False)
        consumed = all(matcher.consume_token(token) for token in tokens)
        assert (consumed and matcher.is_accepting()) is accepted, (fmt, text)


def test_a_bare_call_object_is_a_call_beside_an_answer(grammar_tokenizer: tuple[Any, Any]) -> None:
    """A json_tools model whose untagged calls the edge reads (small Qwens write them so) may
    also call with a bare call object; without `untagged`, only the tagged call is one."""
    import llguidance

    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags("json_tools") if tag in vocab}
    bare = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "temperature": 1.5}}'
    for untagged in (True, False):
        grammar = tool_call_grammar(
            [TOOL], None, True, "json_tools", tags, answer_schema=ANSWER_SCHEMA, untagged=untagged
        )
        matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
        tokens = tokenizer.encode(bare, add_special_tokens=False)
        consumed = all(matcher.consume_token(token) for token in tokens)
        assert (consumed and matcher.is_accepting()) is untagged


def tree_tool(name: str, leaf: dict[str, Any]) -> dict[str, Any]:
    """A recursive pydantic model's parameters as pydantic writes them (a `Node`'s children are
    `Node`s: the reference inside its own definition cannot be inlined)."""
    node = {
        "type": "object",
        "properties": {
            "value": leaf,
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
        },
        "required": ["value", "children"],
        "additionalProperties": False,
    }
    parameters = {"$defs": {"Node": node}, "$ref": "#/$defs/Node"}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


ODD_TOOLS = [
    {"type": "function", "function": {"name": "no_parameters"}},
    {  # as pydantic writes a nested model: a `$ref` into `$defs`, which the grammar inlines
        "type": "function",
        "function": {
            "name": "nested",
            "parameters": {
                "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
                "type": "object",
                "properties": {"place": {"$ref": "#/$defs/Place"}},
                "required": ["place"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "mixed",
            "parameters": {
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "either": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "bounded": {"type": "integer", "minimum": 1, "maximum": 9},
                    'quote"d': {"type": "string", "maxLength": 3},
                },
                "required": ["unit"],
            },
        },
    },
    tree_tool("tree", {"type": "integer"}),
    {  # a set, as pydantic writes it: `uniqueItems`, which the grammar library does not implement
        "type": "function",
        "function": {
            "name": "a_set",
            "parameters": {
                "type": "object",
                "properties": {
                    "ids": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
                },
                "required": ["ids"],
            },
        },
    },
]


@pytest.mark.parametrize("fmt", GRAMMAR_FORMATS)
def test_forced_grammars_compile_for_any_schema(
    fmt: str, grammar_tokenizer: tuple[Any, Any]
) -> None:
    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags(fmt) if tag in vocab}
    for forced in (None, "no_parameters", "mixed", "nested", "tree", "a_set"):
        compiler.check(tool_call_grammar(ODD_TOOLS, forced, True, fmt, tags), "tool_choice")


def test_a_recursive_models_calls_are_enforced_at_every_depth(
    grammar_tokenizer: tuple[Any, Any],
) -> None:
    """A forced call of a recursive model (Instructor's TOOLS mode sends one for a tree) is
    enforced at any depth, each tool's definitions its own where two tools name theirs alike:
    before, the reference inside `Node` pointed nowhere once the parameters were placed in the
    call's schema, and the request was a 400."""
    import llguidance

    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags("json_tools") if tag in vocab}
    tools = [tree_tool("numbers", {"type": "integer"}), tree_tool("words", {"type": "string"})]
    leaf = '{{"value": {1}, "children": []}}'
    deep = '{{"value": {0}, "children": [{{"value": {0}, "children": [' + leaf + "]}}]}}"
    outputs = {
        ("numbers", deep.format(1, 2)): True,
        ("numbers", deep.format(1, '"two"')): False,  # a word three levels down
        ("words", deep.format('"a"', '"b"')): True,
        ("words", deep.format('"a"', 2)): False,
    }
    grammar = tool_call_grammar(tools, None, True, "json_tools", tags)
    compiler.check(grammar, "tool_choice")
    for (name, arguments), accepted in outputs.items():
        text = f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'
        matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
        tokens = tokenizer.encode(text, add_special_tokens=False)
        consumed = all(matcher.consume_token(token) for token in tokens)
        assert (consumed and matcher.is_accepting()) is accepted, (name, arguments)


def test_a_tool_that_is_not_strict_is_held_to_what_the_library_implements(
    grammar_tokenizer: tuple[Any, Any],
) -> None:
    """A forced call of a tool whose schema has a keyword the grammar library does not
    implement (a pydantic set's `uniqueItems`) is held to the rest of its schema, as OpenAI's
    API takes such a tool when it is not strict; a strict one is refused, as OpenAI's API
    refuses it. Before, both were a 400 ('Unimplemented keys')."""
    import llguidance

    from engines.errors import InvalidRequest
    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags("json_tools") if tag in vocab}
    a_set = next(tool for tool in ODD_TOOLS if tool["function"]["name"] == "a_set")
    grammar = tool_call_grammar([a_set], None, True, "json_tools", tags)
    compiler.check(grammar, "tool_choice")
    for ids, accepted in (("[1, 2]", True), ("[1, 1]", True), ('[1, "2"]', False)):
        text = f'<tool_call>\n{{"name": "a_set", "arguments": {{"ids": {ids}}}}}\n</tool_call>'
        matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
        tokens = tokenizer.encode(text, add_special_tokens=False)
        consumed = all(matcher.consume_token(token) for token in tokens)
        assert (consumed and matcher.is_accepting()) is accepted, ids
    strict = {"type": "function", "function": {**a_set["function"], "strict": True}}
    for fmt in ("json_tools", "qwen3_coder"):
        with pytest.raises(InvalidRequest, match="uniqueItems"):
            compiler.check(tool_call_grammar([strict], None, True, fmt, tags), "tool_choice")


def test_an_unenforceable_schema_is_refused_in_one_line(
    grammar_tokenizer: tuple[Any, Any],
) -> None:
    """llguidance's reason, without the grammar mlxd built around the schema (its listing and
    positions in it are nothing the client wrote)."""
    from engines.errors import InvalidRequest
    from engines.llm.call_grammars import tool_call_grammar

    _, compiler = grammar_tokenizer
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}]
    with pytest.raises(InvalidRequest) as refused:
        compiler.check(tool_call_grammar(tools, None, True, "json_tools", {}), "tool_choice")
    message = refused.value.message
    reason = "failed to compile JSON schema: Invalid type: wat"
    assert message == f"tool_choice cannot be enforced: {reason}"


def test_the_engine_keeps_only_the_formats_special_markers(
    grammar_tokenizer: tuple[Any, Any],
) -> None:
    """Special tokens are skipped in emitted text, except the markers the model's format needs
    (here harmony's): the same text the tokenizer gives with them kept, less the others."""
    from engines.llm.chat_formats import hidden_special_ids
    from engines.llm.detokenize import IncrementalDetokenizer

    tokenizer, _ = grammar_tokenizer
    assert hidden_special_ids(tokenizer, "json_tools", None) is None  # no special marker
    hidden = hidden_special_ids(tokenizer, "harmony", None)
    assert hidden is not None
    text = "<|channel|>final<|message|>Hi<|im_end|> there<|tool_call_start|>"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, hidden=hidden)
    emitted = "".join(detokenizer.add(token) for token in tokens) + detokenizer.flush()
    assert emitted == "<|channel|>final<|message|>Hi there"


def test_the_detokenizer_calls_the_rust_decode_with_the_same_text(
    grammar_tokenizer: tuple[Any, Any],
) -> None:
    """SmolLM2's tokenizer qualifies for the direct Rust `decode`; it gives transformers' text
    with special tokens skipped or kept, whole and streamed a token at a time."""
    from engines.llm.detokenize import IncrementalDetokenizer, rust_decode

    tokenizer, _ = grammar_tokenizer
    assert rust_decode(tokenizer) is not None
    text = "<|im_start|>def f(x):\n    return x ** 2  # ½ — 東京 🙂<|im_end|> ok"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    for skip in (True, False):
        expected = tokenizer._tokenizer.decode(tokens, skip_special_tokens=skip)
        assert rust_decode(tokenizer)(tokens, skip_special_tokens=skip) == expected
        detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
        emitted = "".join(detokenizer.add(token) for token in tokens) + detokenizer.flush()
        assert emitted == expected


def test_the_generic_format_replays_a_calls_arguments_as_the_model_wrote_them() -> None:
    """SmolLM2 has no tool template: its earlier calls go back into the prompt as the JSON it
    writes, characters as they are (an escaped `\\u5317` history is not what the model wrote,
    and would break the cached prefix of the next turn)."""
    from mlx_lm.tokenizer_utils import load

    from engines.llm.templates import render_chat

    tokenizer = load(store_entry(SMOLLM2.name))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    call = {"id": "c1", "type": "function"}
    call["function"] = {"name": "weather", "arguments": '{"city": "北京"}'}
    messages = [
        {"role": "user", "content": "北京的天气?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "晴"},
    ]
    prompt = render_chat(tokenizer, messages, tools)
    assert '"arguments": {"city": "北京"}' in prompt
    assert "\\u" not in prompt


def test_a_prefill_ends_the_prompt_inside_the_assistants_message() -> None:
    """`CONTINUE_FINAL`: the prompt stops right after the final assistant message's text (no
    end-of-turn, no new assistant turn), so the model continues it."""
    from mlx_lm.tokenizer_utils import load

    from engines.llm.templates import CONTINUE_FINAL, render_chat

    tokenizer = load(store_entry(SMOLLM2.name))
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bonjour"}]
    continued = render_chat(tokenizer, turns, None, {CONTINUE_FINAL: True})
    assert continued.endswith("<|im_start|>assistant\nBonjour")
    opened = render_chat(tokenizer, turns, None, {})
    assert opened.endswith("Bonjour<|im_end|>\n<|im_start|>assistant\n")


def test_an_answer_schema_with_refs_beside_calls(grammar_tokenizer: tuple[Any, Any]) -> None:
    """A pydantic model with a nested model (`$defs`, `#/$defs/...` refs) as the answer: its
    refs resolve in the call-or-answer grammar (each JSON alternative at its own root)."""
    import llguidance

    from engines.llm.call_grammars import grammar_tags, tool_call_grammar

    tokenizer, compiler = grammar_tokenizer
    vocab = tokenizer.get_vocab()
    tags = {tag: vocab[tag] for tag in grammar_tags("json_tools") if tag in vocab}
    nested = {
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
    }
    grammar = tool_call_grammar(
        [TOOL], None, True, "json_tools", tags, answer_schema=nested, untagged=True
    )
    compiler.check(grammar, "response_format.json_schema.schema")
    matcher = llguidance.LLMatcher(compiler._tokenizer, grammar)
    tokens = tokenizer.encode('{"place": {"city": "Paris"}}', add_special_tokens=False)
    assert all(matcher.consume_token(token) for token in tokens) and matcher.is_accepting()


# -- a one-call turn's end, on real tokens ------------------------------------------------------
# `parallel_tool_calls: false` in the formats that write no end of a single call: the engine's
# end watch (server/first_call.py) reads the text as the detokenizer emits it, and SmolLM2's
# tokens merge a call's closing bracket with what follows it (`}},`, `)],`). A grammar of the
# two-call text holds the random model to it, in whichever of its tokenizations it samples.

ONE_CALL_TURNS = {
    "mistral": (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris }]", "days": 3}}',
        ', {"name": "get_weather", "arguments": {"city": "Oslo"}}]',
    ),
    "mistral ([ARGS])": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}',
    ),
    "llama3": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris {\\""}}',
        '; {"name": "get_weather", "parameters": {"city": "Oslo"}}',
    ),
    "pythonic": (
        '<|tool_call_start|>[get_weather(city="Paris )", days=3)',
        ', get_weather(city="Oslo")]<|tool_call_end|>',
    ),
    "kimi_k3": (
        '<|open|>tools<|sep|><|open|>call tool="get_weather"<|sep|><|open|>argument key="city"'
        "<|sep|>Paris<|close|>argument<|sep|><|close|>call<|sep|>",
        '<|open|>call tool="get_weather"<|sep|><|close|>call<|sep|><|close|>tools<|sep|>',
    ),
}


async def test_a_one_call_turn_ends_after_its_first_call(tmp_path: Path) -> None:
    directory = random_weights_dir(store_entry(SMOLLM2.name), tmp_path / "model")
    engine = LLMEngine("tiny", directory)
    engine.start()
    try:
        await engine.wait_loaded()
        for turn, (first, rest) in ONE_CALL_TURNS.items():
            fmt = turn.split()[0]
            grammar = lark_grammar(f"start: {json.dumps(first + rest)}")
            watch = partial(FirstCallEnd, fmt, {"get_weather": None}, None, False)
            for seed in range(3):
                sampling = SamplingParams(temperature=1.0, seed=seed)
                whole = GenerationRequest(f"w{seed}", PROMPT, 400, sampling, grammar=grammar)
                text, tokens, _ = await run(engine, whole)
                assert text == first + rest, turn
                one = dataclasses.replace(whole, request_id=f"o{seed}", end_watch=watch)
                cut, cut_tokens, finish = await run(engine, one)
                assert (cut, finish.reason) == (first, "stop"), turn
                assert len(cut_tokens) < len(tokens), turn
    finally:
        engine.stop()
