"""Reranking with a chat model: each document is judged "yes" or "no" (the Qwen3-Reranker
recipe), and its relevance is the model's probability of "yes" against "no".

The prompt is Qwen3-Reranker's: a system line asking for "yes" or "no", then `<Instruct>`,
`<Query>` and `<Document>` in the user turn, rendered with the model's own chat template
(thinking off, so a Qwen3 template ends in the empty think block that Qwen3-Reranker was trained
with), plus one closing question (`QUESTION`): without it a general chat model's answer did not
depend on the document (docs/api.md). The score is P(yes) / (P(yes) + P(no)) for the next token,
each answer in either case ("yes" or "Yes"): for Qwen3-Reranker, which answers in lower case,
that is `sigmoid(logit_yes - logit_no)`, what it computes from the last position.

It runs through the chat engine's own batch as ordinary one-token greedy requests, reusing the
engine's logprobs: the answer tokens all get the same `logit_bias` (`ANSWER_BIAS`), which moves
them to the top places without changing their differences, and `logprobs` (as many as there are
answer tokens) returns them all. No second copy of the model's forward pass or sampling exists.

Only a model trained for this judging ranks well (Qwen3-Reranker); the small chat models mlxd
ships are not rerankers (Qwen2.5-Coder-0.5B puts a clearly relevant document above unrelated
ones by a small margin but below a near-miss; SmolLM2-135M is flat: docs/api.md has the numbers).

Invariants: every stream submitted here is read to its end or cancelled (`judge`'s finally);
at most `IN_FLIGHT` documents are in the engine at once, so a long document list neither floods
the engine's queue nor starves other clients.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from engines.errors import EngineFailed
from engines.kinds import ChatEngine
from engines.types import ErrorEvent, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from server.errors import APIError
from server.generation import EventSource

JUDGE_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QUESTION = "Does the Document answer the Query? Answer yes or no."
NO_THINKING = {"enable_thinking": False}
ANSWER_BIAS = 100.0  # far above any logit gap a model makes between its top token and yes/no
IN_FLIGHT = 16  # documents judged at once (each is one engine sequence)


@dataclass(frozen=True)
class Answers:
    """The token ids whose next-token probabilities are compared (each answer in both cases)."""

    yes: tuple[int, ...]
    no: tuple[int, ...]

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.yes + self.no


def answer_tokens(engine: ChatEngine, model: str) -> Answers:
    """The first token of "yes" / "Yes" and of "no" / "No" in the model's vocabulary (one token
    each in Qwen's); 400 naming the model if a yes and a no share their first token."""
    bos = engine.encode_text("")

    def first_tokens(*words: str) -> tuple[int, ...]:
        firsts = [engine.encode_text(word)[len(bos) :][:1] for word in words]
        return tuple(dict.fromkeys(token for first in firsts for token in first))

    yes, no = first_tokens("yes", "Yes"), first_tokens("no", "No")
    if not yes or not no or set(yes) & set(no):
        raise APIError(
            400,
            f"'{model}' cannot judge documents: its tokenizer does not tell 'yes' from 'no' "
            "by the first token",
            param="model",
        )
    return Answers(yes, no)


def judging_prompt(
    engine: ChatEngine,
    query: str,
    document: str,
    instruction: str = DEFAULT_INSTRUCTION,
    *,
    cut: bool = True,
    name: str = "document",
) -> list[int]:
    """The prompt's token ids; a document too long for the context is cut from its end (as
    rerankers read the start of a document), or unless `cut` is a 400 naming it (`name`); a
    query too long even then is a 400 (ContextTooLong, naming the query). Pure Python (template
    and tokenizer): any thread."""
    assert engine.info is not None
    tokens = engine.encode_chat(_messages(query, document, instruction), None, NO_THINKING)
    most = engine.info.context_length - 1  # room for the one answer token
    over = len(tokens) - most
    if over > 0 and not cut:
        raise APIError(
            400,
            f"{name} makes a judging prompt of {len(tokens)} tokens; '{engine.info.name}' reads "
            f'at most {most} (its context less the answer\'s token; send "truncation": true to '
            "cut documents to fit)",
            param="documents",
            code="context_length_exceeded",
        )
    if over > 0:
        bos = engine.encode_text("")
        body = engine.encode_text(document)[len(bos) :]
        keep = max(0, len(body) - over - 8)  # 8: tokens may merge differently at the cut
        start = engine.decode(body[:keep])
        tokens = engine.encode_chat(_messages(query, start, instruction), None, NO_THINKING)
    engine.check_fits(len(tokens), 1, param="query")
    return tokens


def _messages(query: str, document: str, instruction: str) -> list[dict[str, str]]:
    user = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}\n{QUESTION}"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


async def judge(
    engine: ChatEngine,
    request_id: str,
    prompts: Sequence[list[int]],
    answers: Answers,
    streams: list[EventSource],
) -> list[float] | Exception:
    """Each prompt's P(yes) / (P(yes) + P(no)), or the first engine error. Streams are appended
    to `streams` as they are submitted (so a caller's disconnect watch can cancel them)."""
    scores = [0.0] * len(prompts)
    bias = tuple((token, ANSWER_BIAS) for token in answers.tokens)
    sampling = SamplingParams(temperature=0.0, logit_bias=bias)
    shown = len(answers.tokens)
    waiting = iter(range(len(prompts)))

    async def judge_in_turn() -> None:
        for index in waiting:  # shared: each worker takes the next document
            request = GenerationRequest(
                f"{request_id}-{index}",
                prompts[index],
                1,
                sampling,
                logprobs=shown,
                speculative=False,
            )
            stream = engine.submit(request)
            streams.append(stream)
            scores[index] = await _yes_probability(stream, answers)

    # Each document in flight holds one of the engine's queue places: never more than it has,
    # or the rerank would refuse itself (429) and crowd out other clients.
    room = engine.stats().max_waiting or IN_FLIGHT
    in_flight = max(1, min(IN_FLIGHT, len(prompts), room // 2))
    workers = [asyncio.ensure_future(judge_in_turn()) for _ in range(in_flight)]
    try:
        await asyncio.gather(*workers)
    except Exception as exc:  # an engine error (refusal or failure): the route's error body
        return exc
    finally:
        for worker in workers:
            worker.cancel()
        for stream in streams:
            stream.cancel()  # idempotent; stops any judging still running after an error
    return scores


class JudgingFailed(EngineFailed):
    """The engine's answer did not carry both answers' logprobs (a 500: the engine ignored the
    logit_bias or the logprobs it was asked for; never a made-up score)."""


async def _yes_probability(stream: EventSource, answers: Answers) -> float:
    top: dict[int, float] = {}
    async for event in stream:
        if isinstance(event, TokenEvent) and event.logprobs:
            top = {token: logprob for token, _, logprob in event.logprobs[0].top}
        elif isinstance(event, ErrorEvent):
            raise event.error
        elif isinstance(event, FinishEvent):
            break
    if any(token not in top for token in answers.tokens):
        raise JudgingFailed(f"the answer's top logprobs {sorted(top)} miss yes or no")
    yes = sum(math.exp(top[token]) for token in answers.yes)
    return yes / (yes + sum(math.exp(top[token]) for token in answers.no))
