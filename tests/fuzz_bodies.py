"""Hypothesis strategies for request bodies of the generation routes (any JSON in the fields
they name) and the check every answer must pass: a 200 or an OpenAI-shaped 4xx, never a 5xx.
Shared by the in-process fuzz test (fake engine) and the one on a real engine."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

CHAT_FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "user", "tools",
    "response_format",
]  # fmt: skip
COMPLETION_FIELDS = ["model", "prompt", "suffix", "echo", "logprobs", "best_of", *CHAT_FIELDS[2:]]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "system", "assistant", "tool", "bogus"])},
    optional={"content": st.one_of(st.text(max_size=30), st.text(max_size=30), json_values)},
)


def bodies(fields: list[str], extra: dict[str, Any]) -> Any:
    values = st.dictionaries(st.sampled_from(fields), json_values, max_size=6)
    return st.builds(
        lambda base, more: {**more, **base}, st.fixed_dictionaries({}, optional=extra), values
    )


CHAT_BODIES = bodies(
    CHAT_FIELDS, {"model": st.just("fake"), "messages": st.lists(message, max_size=3)}
)
COMPLETION_BODIES = bodies(
    COMPLETION_FIELDS,
    {"model": st.just("fake"), "prompt": st.one_of(st.text(max_size=30), json_values)},
)


def check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif response.headers["content-type"].startswith("application/json"):
        assert "choices" in response.json()
    else:
        assert response.text.rstrip().endswith("data: [DONE]")
