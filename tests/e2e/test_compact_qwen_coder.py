"""Opt-in (MLXD_OPTIN=1; CI sets it): `POST /v1/responses/compact` on the real
Qwen2.5-Coder-0.5B-Instruct through the strict SDK: the model writes a summary of an agent's
conversation (a bug report, a file read by a tool, the fix), the compaction item that holds it
makes a shorter prompt than the conversation did, and a later request that sends it in `input`
is answered."""

from __future__ import annotations

from typing import Any

import pytest

from engines.weights.embedded import QWEN_CODER
from server.compaction_content import decode
from tests.helpers import sdk_client

pytestmark = pytest.mark.optin

SOURCE = "\n".join(
    f"def handler_{n}(request):\n    return respond(request, status={200 + n})\n" for n in range(40)
)
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "handler_7 in app/handlers.py answers the wrong status. Fix it."},
    {"type": "function_call", "call_id": "c1", "name": "read_file",
     "arguments": '{"path": "app/handlers.py"}'},
    {"type": "function_call_output", "call_id": "c1", "output": SOURCE},
    {"role": "assistant", "content": "handler_7 returns status 207; it should return 200. "
     "I changed `status=207` to `status=200` in app/handlers.py."},
]  # fmt: skip
FOLLOW_UP = {"role": "user", "content": "Which file did you change?"}


def test_the_model_compacts_a_conversation_into_a_shorter_prompt(coder_url: str) -> None:
    client = sdk_client(coder_url)
    compacted = client.responses.compact(model=QWEN_CODER.name, input=CONVERSATION)  # type: ignore[arg-type]
    [item] = compacted.output
    assert item.type == "compaction"
    summary = decode(item.encrypted_content).summary
    assert summary.strip() and compacted.usage.output_tokens > 0
    assert compacted.usage.input_tokens > len(SOURCE) // 8  # the conversation was read

    def prompt_tokens(conversation: list[Any]) -> int:
        counted = client.responses.input_tokens.count(
            model=QWEN_CODER.name,
            input=[*conversation, FOLLOW_UP],  # type: ignore[list-item]
        )
        return counted.input_tokens

    assert prompt_tokens([item.to_dict()]) < prompt_tokens(CONVERSATION)
    response = client.responses.create(
        model=QWEN_CODER.name,
        input=[item.to_dict(), FOLLOW_UP],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=40,
    )
    assert response.output_text.strip()
