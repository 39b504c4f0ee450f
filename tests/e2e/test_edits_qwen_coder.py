"""Opt-in (MLXD_OPTIN=1; CI sets it): what an editing agent sends, on the real
Qwen2.5-Coder-0.5B-Instruct with prompt lookup on, greedy, through the strict SDK.

- Predicted Outputs: a request whose `prediction` is the reply comes back with the same text as
  without it, most of the prediction kept as drafts (usage says how many).
- Responses `truncation: "auto"`: a conversation longer than the model's (here 1,024-token)
  context drops its oldest turns and is answered; `disabled` is the 400 it always was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engines.weights.embedded import QWEN_CODER, ensure_embedded_llm
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import sdk_client
from tests.servers import serve

pytestmark = pytest.mark.optin

CODE = '''def area(width, height):
    """Area of a rectangle."""
    return width * height


def perimeter(width, height):
    """Perimeter of a rectangle."""
    return 2 * (width + height)
'''
EDIT = [
    {
        "role": "user",
        "content": "Add a docstring-less function `square(side)` that returns the area of a "
        f"square using `area`. Reply with the whole code only.\n\n```python\n{CODE}```",
    }
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = Settings().home
    ensure_embedded_llm(ModelStore(home), dequantize=True, model=QWEN_CODER)
    models = Path(tmp_path_factory.mktemp("edits")) / "models.toml"
    models.write_text(
        f'[[models]]\nname = "coder"\nsource = "{QWEN_CODER.name}"\nkind = "chat"\n'
        'speculative = "prompt_lookup"\ncontext_length = 1024\n'
    )
    settings = Settings(config=models, speech_model="", embedding_model="", home=home)
    with serve(create_app(settings)) as served:
        yield served


def test_a_right_prediction_is_kept_and_changes_nothing(url: str) -> None:
    client = sdk_client(url, timeout=600)
    fields = {"model": "coder", "messages": EDIT, "temperature": 0, "max_tokens": 160}
    plain = client.chat.completions.create(**fields)  # type: ignore[call-overload]
    reply = plain.choices[0].message.content
    assert reply and "def square" in reply
    prediction = {"type": "content", "content": reply}
    predicted = client.chat.completions.create(**fields, prediction=prediction)  # type: ignore[call-overload]
    assert predicted.choices[0].message.content == reply
    details = predicted.usage.completion_tokens_details
    tokens = predicted.usage.completion_tokens
    assert details.accepted_prediction_tokens >= 0.7 * tokens, predicted.usage
    assert details.rejected_prediction_tokens >= 0
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens is None


def test_truncation_auto_answers_a_conversation_over_the_context(url: str) -> None:
    client = sdk_client(url, timeout=600)
    turns: list[dict[str, str]] = [{"role": "system", "content": "Answer in one word."}]
    for i in range(12):
        turns += [
            {"role": "user", "content": f"Note {i}: " + "the quick brown fox jumps. " * 12},
            {"role": "assistant", "content": "Noted."},
        ]
    turns.append({"role": "user", "content": "What colour is the fox?"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="coder", input=turns, max_output_tokens=8)  # type: ignore[arg-type]
    assert refused.value.code == "context_length_exceeded"
    response = client.responses.create(
        model="coder",
        input=turns,  # type: ignore[arg-type]
        max_output_tokens=8,
        truncation="auto",
        temperature=0,
    )
    assert response.truncation == "auto" and response.output_text
    assert response.usage is not None and response.usage.input_tokens + 8 <= 1024
