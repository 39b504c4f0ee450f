"""Predicted Outputs on /v1/chat/completions: limits of the `prediction` (the contract of its
usage counts is in test_chat_contract.py)."""

from __future__ import annotations

import httpx

from tests.fakes import FakeEngine
from tests.helpers import URL, assert_openai_error, chat_body


async def test_a_prediction_longer_than_the_context_is_a_400(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """A prediction no reply could be as long as (past the model's context: the fake's 64
    tokens, a character each) is refused before it reaches the engine, whose thread indexes
    every predicted token; one that fits is served."""
    served = len(fake_engine.requests)
    response = await http.post(
        URL, json=chat_body(prediction={"type": "content", "content": "x" * 64})
    )
    error = assert_openai_error(response, 400, "prediction")
    assert error["code"] == "context_length_exceeded" and "64" in error["message"]
    assert len(fake_engine.requests) == served
    fits = await http.post(URL, json=chat_body(prediction={"type": "content", "content": "x" * 63}))
    assert fits.status_code == 200 and fake_engine.requests[-1].prediction == (ord("x"),) * 63
