"""Document blocks on `/v1/messages`: a plain-text document (`source.type` `text`) or one of text
blocks (`content`) is read as text in the user turn, under its title and context; a PDF is a
400 naming the block, but in a tool result a note in its place. Through the strict `anthropic`
SDK on a scripted engine.

The shape is the Vercel AI SDK's (`@ai-sdk/anthropic` 3.0.140): a `file` part of media type
`text/plain` becomes `{"type": "document", "source": {"type": "text", ...}, "title": filename}`;
it was a 400 ("Input 'type' should be one of 'text', 'image', ...")."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic import AsyncAnthropic, BadRequestError

from tests.fakes import FakeEngine

QUESTION = {"type": "text", "text": "What is the secret word?"}


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


def prompt_of(engine: FakeEngine) -> str:
    return engine.decode(engine.requests[-1].prompt_tokens)


@pytest.mark.parametrize(
    "source",
    [
        {"type": "text", "media_type": "text/plain", "data": "The secret word is pineapple."},
        {"type": "content", "content": [{"type": "text", "text": "The secret word is pineapple."}]},
        {"type": "content", "content": "The secret word is pineapple."},
    ],
)
async def test_a_text_document_is_read_in_the_user_turn(
    claude: AsyncAnthropic, fake_engine: FakeEngine, source: dict[str, Any]
) -> None:
    document = {"type": "document", "source": source, "title": "notes.txt", "context": "Mine."}
    messages: Any = [{"role": "user", "content": [QUESTION, document]}]
    counted = await claude.messages.count_tokens(model="fake", messages=messages)
    message = await claude.messages.create(model="fake", max_tokens=50, messages=messages)
    assert prompt_of(fake_engine) == (
        "<user>What is the secret word?\nnotes.txt\nMine.\nThe secret word is pineapple."
    )
    assert counted.input_tokens == message.usage.input_tokens


async def test_a_pdf_document_is_a_400_naming_it(claude: AsyncAnthropic) -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
    messages: Any = [{"role": "user", "content": [QUESTION, {"type": "document", "source": pdf}]}]
    with pytest.raises(BadRequestError, match=r"messages\[0\]\.content\[1\]\.source.: .*PDF"):
        await claude.messages.create(model="fake", max_tokens=50, messages=messages)


def tool_turns(*result: dict[str, Any]) -> Any:
    call = {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "notes.txt"}}
    return [
        {"role": "user", "content": "Read notes.txt"},
        {"role": "assistant", "content": [call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": list(result)}],
        },
    ]


async def test_a_text_document_in_a_tool_result_is_read_there(
    claude: AsyncAnthropic, fake_engine: FakeEngine
) -> None:
    """Anthropic's tool results may hold documents (a file-reading tool's): read as text, in
    the tool turn, as in a user turn."""
    source = {"type": "text", "media_type": "text/plain", "data": "The secret word is pineapple."}
    document = {"type": "document", "source": source, "title": "notes.txt"}
    messages = tool_turns({"type": "text", "text": "Found:"}, document)
    await claude.messages.create(model="fake", max_tokens=50, messages=messages)
    assert prompt_of(fake_engine).endswith("<tool>Found:\nnotes.txt\nThe secret word is pineapple.")


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
        {"type": "url", "url": "https://example.com/doc.pdf"},
    ],
)
async def test_a_pdf_document_in_a_tool_result_is_read_as_a_note(
    claude: AsyncAnthropic, fake_engine: FakeEngine, source: dict[str, Any]
) -> None:
    """Claude Code's Read tool answers with the PDF itself (a `base64` document after a text
    block). mlxd reads no PDFs; refused, the result would fail every later request of the
    session, so the model reads a note in its place (as a model that reads no images reads
    one in an image's place)."""
    read = {"type": "text", "text": "PDF file read: /work/doc.pdf (394 bytes)"}
    messages = tool_turns(read, {"type": "document", "source": source, "title": "doc.pdf"})
    counted = await claude.messages.count_tokens(model="fake", messages=messages)
    message = await claude.messages.create(model="fake", max_tokens=50, messages=messages)
    assert prompt_of(fake_engine).endswith(
        "<tool>PDF file read: /work/doc.pdf (394 bytes)\ndoc.pdf\n"
        "[document: not shown, this server reads no PDFs]"
    )
    assert counted.input_tokens == message.usage.input_tokens
