"""System turns after the first message (Claude Code's environment) on real tokenizers: rendered
in place by templates that render them (SmolLM2's, Qwen2.5-Coder's: the environment comes after
the system prompt and the tools block, so sessions in other directories or on other days share
that whole prefix), merged into the leading system turn by templates that refuse them (Gemma 3's
"roles must alternate") or drop them (Qwen2.5's `developer`), the same way on every turn.

SmolLM2's tokenizer is the embedded model's; Qwen2.5-Coder's and Gemma 3's (gemma-3-270m, whose
GGUF has no chat template: it is given `GEMMA_STYLE`, written here to behave as Gemma 3's) come
from the store and are opt-in (MLXD_OPTIN=1) like their other tests. The routes run end to end
on the tiny random model with `GEMMA_STYLE`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from jinja2 import TemplateError
from mlx_lm.tokenizer_utils import load

from engines.llm.engine import LLMEngine
from engines.llm.templates import render_chat
from engines.pool import EnginePool
from engines.types import ChatLimits
from engines.vlm.front import VisionFront
from engines.weights.embedded import GEMMA3_270M, QWEN_CODER, SMOLLM2, ensure_embedded_llm
from engines.weights.store import ModelStore
from server.app import create_app
from server.chat_pipeline import template_inputs
from server.schemas.anthropic import MessagesRequest
from server.schemas.chat import ChatCompletionRequest
from server.settings import Settings

CAPTURE = json.loads(
    (Path(__file__).parents[1] / "unit" / "claude_code_2_1_332_full_turns.json").read_text()
)
FIRST, FOLLOW_UP = CAPTURE["turns"]
# Another session: another working directory, another day (both in the environment turn).
ELSEWHERE = {"/tmp/agents3/work": "/home/dev/other-project", "2026-12-04": "2026-12-05"}

# Behaves as Gemma 3's template: a leading system turn goes into the first user turn, the turns
# after it must alternate user/model, and content may be text or parts (images). A system turn
# right after the first user turn passes that check (odd place, not a user) until an assistant
# turn follows it.
GEMMA_STYLE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set lead = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set lead = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{{ lead if loop.first else '' }}"
    "{%- if m['content'] is string -%}{{ m['content'] | trim }}{%- else -%}"
    "{%- for part in m['content'] -%}"
    "{{ '<start_of_image>' if part['type'] == 'image' else part['text'] | trim }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
# ChatML that shows a leading system turn and user/assistant turns only: later system turns
# vanish without an error.
DROPS_LATER_SYSTEM = (
    "{%- for m in messages -%}"
    "{%- if (loop.first and m['role'] == 'system') or m['role'] in ('user', 'assistant') -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

OPTIN = pytest.mark.optin
SMOLLM2_NAME = SMOLLM2.name
QWEN = pytest.param(QWEN_CODER.name, marks=OPTIN)
GEMMA3 = pytest.param(GEMMA3_270M.name, marks=OPTIN)
MODELS = {model.name: model for model in (SMOLLM2, QWEN_CODER, GEMMA3_270M)}


@cache
def tokenizer(name: str, template: str | None = None) -> Any:
    """The store model's real tokenizer, with `template` as its chat template if given."""
    path = ensure_embedded_llm(ModelStore(Settings().home), dequantize=True, model=MODELS[name])
    loaded = load(path)
    if template is not None:
        loaded.chat_template = template
    return loaded


def anthropic_prompt(tok: Any, body: dict[str, Any]) -> str:
    """The prompt the Messages route renders for `body` (translation, chat request, template)."""
    messages_request = MessagesRequest.model_validate({**body, "model": "m"})
    chat = ChatCompletionRequest.model_validate(messages_request.chat_body())
    tools, messages = template_inputs(chat)
    return render_chat(tok, messages, tools, chat.template_kwargs())


def as_is(tok: Any, messages: list[dict[str, Any]]) -> str:
    """The template's own rendering of `messages`, nothing moved."""
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def elsewhere(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with its environment turn from another session (same request otherwise)."""
    messages = []
    for message in body["messages"]:
        if message["role"] == "system":
            text = json.dumps(message)
            for old, new in ELSEWHERE.items():
                assert old in text
                text = text.replace(old, new)
            message = json.loads(text)
        messages.append(message)
    return {**body, "messages": messages}


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@pytest.mark.parametrize("name", [SMOLLM2_NAME, QWEN])
def test_the_environment_stays_in_place_and_sessions_share_the_tools(name: str) -> None:
    """Claude Code's first turn: the environment turn renders after the first user turn, so a
    session elsewhere shares every token up to that turn's end, tools included."""
    tok = tokenizer(name)
    here, there = anthropic_prompt(tok, FIRST), anthropic_prompt(tok, elsewhere(FIRST))
    end_of_user = here.index("<|im_end|>", here.index("<|im_start|>user")) + len("<|im_end|>")
    assert here[end_of_user:].startswith("\n<|im_start|>system\n# Environment\n")
    assert all(f'"name": "{tool["name"]}"' in here[:end_of_user] for tool in FIRST["tools"])
    assert "Primary working directory" not in here[:end_of_user]
    ids_here = tok.encode(here, add_special_tokens=False)
    ids_there = tok.encode(there, add_special_tokens=False)
    shared = tok.encode(here[:end_of_user], add_special_tokens=False)
    assert common_prefix(ids_here, ids_there) >= len(shared) > 8000  # the whole system + tools
    assert ids_here[: len(shared)] == shared


CONVERSATION = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Read notes.txt."},
    {"role": "system", "content": "Working directory: /tmp/work"},
    {"role": "assistant", "content": "It says hello."},
    {"role": "user", "content": "Thanks."},
]


@pytest.mark.parametrize("name", [SMOLLM2_NAME, GEMMA3])
def test_a_template_that_refuses_later_system_turns_gets_them_merged(name: str) -> None:
    tok = tokenizer(name, GEMMA_STYLE)
    with pytest.raises(TemplateError, match="roles must alternate"):
        as_is(tok, CONVERSATION)  # the template itself refuses the conversation
    prompt = render_chat(tok, CONVERSATION)
    assert "<start_of_turn>system" not in prompt
    assert prompt.startswith(
        f"{tok.bos_token}<start_of_turn>user\n"
        "You are a coding agent.\n\nWorking directory: /tmp/work\n\nRead notes.txt.<end_of_turn>\n"
    )
    assert prompt.endswith("<start_of_turn>user\nThanks.<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.parametrize(
    ("name", "template", "role"),
    [
        (SMOLLM2_NAME, DROPS_LATER_SYSTEM, "system"),
        pytest.param(QWEN_CODER.name, None, "developer", marks=OPTIN),  # Qwen2.5 drops the role
    ],
)
def test_a_template_that_drops_later_system_turns_gets_them_merged(
    name: str, template: str | None, role: str
) -> None:
    tok = tokenizer(name, template)
    conversation = [
        {**m, "role": role} if m["content"].startswith("Working") else m for m in CONVERSATION
    ]
    assert "Working directory" not in as_is(tok, conversation)
    prompt = render_chat(tok, conversation)
    assert prompt.startswith(
        "<|im_start|>system\nYou are a coding agent.\n\nWorking directory: /tmp/work<|im_end|>\n"
        "<|im_start|>user\nRead notes.txt.<|im_end|>\n"
    )


def test_no_leading_system_turn_merges_into_a_new_one() -> None:
    tok = tokenizer(SMOLLM2_NAME, GEMMA_STYLE)
    prompt = render_chat(tok, CONVERSATION[1:])
    assert prompt.startswith(
        f"{tok.bos_token}<start_of_turn>user\n"
        "Working directory: /tmp/work\n\nRead notes.txt.<end_of_turn>\n"
    )


def test_the_vision_front_merges_too_and_keeps_image_parts() -> None:
    front = VisionFront("vlm", ChatLimits())
    front.tokenizer = tokenizer(SMOLLM2_NAME, GEMMA_STYLE)
    image = [{"type": "image"}, {"type": "text", "text": "What is this?"}]
    later = [{"type": "text", "text": "Working directory: /tmp/work"}]
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": image},
        {"role": "system", "content": later},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Thanks."},
    ]
    assert front.render(messages) == (
        f"{front.tokenizer.bos_token}<start_of_turn>user\nYou are a coding agent.\n\n"
        "Working directory: /tmp/work\n\n<start_of_image>What is this?<end_of_turn>\n"
        "<start_of_turn>model\nA cat.<end_of_turn>\n"
        "<start_of_turn>user\nThanks.<end_of_turn>\n<start_of_turn>model\n"
    )


def turns_of_a_session() -> list[dict[str, Any]]:
    """Claude Code's session as it grows: its first turn, the follow-up after the Read call, and
    one more exchange (each a whole request body)."""
    third = [
        *FOLLOW_UP["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": "The word is marmalade."}]},
        {"role": "user", "content": "Thanks. Now list the directory."},
    ]
    return [FIRST, FOLLOW_UP, {**FOLLOW_UP, "messages": third}]


@pytest.mark.parametrize(
    ("name", "template"),
    [
        (SMOLLM2_NAME, None),
        (SMOLLM2_NAME, GEMMA_STYLE),
        (SMOLLM2_NAME, DROPS_LATER_SYSTEM),
        pytest.param(QWEN_CODER.name, None, marks=OPTIN),
        pytest.param(GEMMA3_270M.name, GEMMA_STYLE, marks=OPTIN),
    ],
)
def test_a_growing_history_renders_to_a_growing_prompt(name: str, template: str | None) -> None:
    """Each turn's prompt starts with the previous one, tokens included: whether the environment
    stays in place or is merged does not change from one turn to the next (Gemma's template
    accepts it in place on the first turn and refuses it on the next)."""
    tok = tokenizer(name, template)
    bodies = turns_of_a_session()
    prompts = [anthropic_prompt(tok, body) for body in bodies]
    for before, after in itertools.pairwise(prompts):
        assert after.startswith(before)
        ids_before = tok.encode(before, add_special_tokens=False)
        ids_after = tok.encode(after, add_special_tokens=False)
        assert common_prefix(ids_before, ids_after) >= len(ids_before) - 1  # the seam may merge
    assert "Primary working directory" in prompts[0]


# -- the routes, end to end on the tiny random model with a Gemma-style template ---------------
@pytest.fixture
async def served(tiny_model_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, LLMEngine]]:
    engine = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(chat_template=GEMMA_STYLE))
    pool = EnginePool([engine])
    app = create_app(Settings(), pool)
    await pool.start()  # ASGITransport runs no lifespan
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client, engine
    await pool.drain(timeout=5)


async def test_every_route_serves_later_system_turns_to_a_gemma_style_template(
    served: tuple[httpx.AsyncClient, LLMEngine],
) -> None:
    """Chat (a system message), Messages (a `system` message) and Responses (a `developer`
    item) after the first user turn: each is answered, its prompt the merged one."""
    http, engine = served
    system, conversation = CONVERSATION[0]["content"], CONVERSATION[1:]
    chat = await http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": CONVERSATION, "max_tokens": 2}
    )
    anthropic = {"model": "tiny", "system": system, "messages": conversation}
    messages = await http.post("/v1/messages", json={**anthropic, "max_tokens": 2})
    count = await http.post("/v1/messages/count_tokens", json=anthropic)
    items = [{**m, "role": "developer"} if m["role"] == "system" else m for m in CONVERSATION]
    responses = await http.post(
        "/v1/responses",
        json={"model": "tiny", "input": items, "max_output_tokens": 2, "store": False},
    )
    for response in (chat, messages, count, responses):
        assert response.status_code == 200, response.text
    merged = (
        f"{engine.tokenizer.bos_token}<start_of_turn>user\nYou are a coding agent.\n\n"
        "Working directory: /tmp/work\n\nRead notes.txt.<end_of_turn>\n"
        "<start_of_turn>model\nIt says hello.<end_of_turn>\n"
        "<start_of_turn>user\nThanks.<end_of_turn>\n<start_of_turn>model\n"
    )
    tokens = len(engine.tokenizer.encode(merged, add_special_tokens=False))
    assert chat.json()["usage"]["prompt_tokens"] == tokens
    usage = messages.json()["usage"]  # Anthropic's input_tokens leave out the cached ones
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == tokens
    assert count.json()["input_tokens"] == tokens
    assert responses.json()["usage"]["input_tokens"] == tokens
