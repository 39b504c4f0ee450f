"""Opt-in (MLXD_OPTIN=1): Gemma 3 270M, whose layers attend over a sliding window (512 tokens on
five layers of six: RotatingKVCache, batched as BatchRotatingKVCache), through the official
openai SDK, greedy, against mlx-lm's own `generate_step` on the same weights (the store entry
loaded as mlxd loads it): a prompt longer than the window, a prompt whose output crosses it and
a short one, running together and joining at different times (one streamed); then a follow-up
turn resumed from the prefix cache past the window. Each output must be the reference's tokens.
(A base model: completions only; its GGUF has no chat template.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

from engines.weights.checkpoint import load_checkpoint
from engines.weights.embedded import GEMMA3_270M, ensure_embedded_llm
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import sdk_client
from tests.servers import serve

pytestmark = pytest.mark.optin

MODEL = GEMMA3_270M.name
OUTPUT = 8  # tokens per reply: short, the machine has 2 cores
SUBJECTS = [
    "The river",
    "A small boat",
    "The old mill",
    "Every morning the baker",
    "The lighthouse",
]
ACTIONS = ["passes the bridge", "waits by the shore", "turns slowly", "counts the sacks of flour"]


def story(lines: int) -> str:
    """Varied, deterministic English text (no model sees this exact text twice)."""
    return "".join(
        f"{i + 1}. {SUBJECTS[i % 5]} {ACTIONS[(i * 3) % 4]} at {6 + i % 12} o'clock.\n"
        for i in range(lines)
    )


@dataclass(frozen=True)
class Case:
    prompt: list[int]  # token ids, BOS first (sent as ids: the follow-up must extend them)
    output: list[int]  # mlx-lm's greedy continuation
    text: str


@dataclass(frozen=True)
class Served:
    url: str
    window: int
    cases: dict[str, Case]
    follow_up: Case


def references(path: Path, window: int) -> tuple[dict[str, Case], Case]:
    """mlx-lm's greedy outputs: the three prompts, and the long one's follow-up turn."""
    model, tokenizer = load_checkpoint(path)
    ids = tokenizer.encode(story(200))
    assert len(ids) > window + 64
    prompts = {
        "longer than the window": ids[: window + 64],
        "output crosses the window": ids[: window - OUTPUT // 2],
        "short": ids[:32],
    }

    def reference(prompt: list[int]) -> Case:
        steps = generate_step(mx.array(prompt), model, max_tokens=OUTPUT)
        output = [int(token) for token, _ in steps]
        return Case(prompt, output, tokenizer.decode(output))

    cases = {name: reference(prompt) for name, prompt in prompts.items()}
    long = cases["longer than the window"]
    more = tokenizer.encode(" 201.", add_special_tokens=False)
    return cases, reference(long.prompt + long.output + more)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    settings = Settings(model=MODEL)
    path = ensure_embedded_llm(ModelStore(settings.home), dequantize=True, model=GEMMA3_270M)
    window = int(json.loads((path / "config.json").read_text())["sliding_window"])
    cases, follow_up = references(path, window)  # first, while no engine thread runs MLX
    with serve(create_app(settings)) as url:
        yield Served(url, window, cases, follow_up)


def test_outputs_equal_mlx_lm_alone_batched_and_resumed_past_the_window(served: Served) -> None:
    client = sdk_client(served.url)
    # The SDK's Completion type has no null finish_reason, which every streamed chunk but the
    # last carries (as OpenAI's own): the streamed request reads them unvalidated.
    lax = sdk_client(served.url, _strict_response_validation=False)
    crossing = served.cases["output crosses the window"]
    assert len(crossing.prompt) < served.window < len(crossing.prompt) + OUTPUT
    got: dict[str, tuple[str, int]] = {}

    def complete(name: str, delay: float) -> None:
        time.sleep(delay)  # joins the running batch at another step
        case = served.cases[name]
        ask = {"model": MODEL, "prompt": case.prompt, "max_tokens": OUTPUT, "temperature": 0}
        if name == "short":  # streamed
            stream = lax.completions.create(stream=True, **ask)  # type: ignore[call-overload]
            got[name] = ("".join(c.choices[0].text for c in stream if c.choices), len(case.prompt))
            return
        reply = client.completions.create(**ask)  # type: ignore[call-overload]
        assert reply.usage is not None
        got[name] = (reply.choices[0].text, reply.usage.prompt_tokens)

    threads = [
        threading.Thread(target=complete, args=(name, 0.4 * i))
        for i, name in enumerate(served.cases)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {name: (case.text, len(case.prompt)) for name, case in served.cases.items()}

    # The next turn extends the long prompt and its reply: resumed from the prefix cache's
    # snapshot, whose windows are full (they cannot be trimmed back), past the window.
    follow_up = served.follow_up
    reply = client.completions.create(
        model=MODEL, prompt=follow_up.prompt, max_tokens=OUTPUT, temperature=0
    )
    assert reply.choices[0].text == follow_up.text
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert (reply.usage.prompt_tokens_details.cached_tokens or 0) > served.window
