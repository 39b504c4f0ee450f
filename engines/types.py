"""Plain dataclasses that cross between the HTTP edge and the engine threads.

Invariants: nothing here holds an MLX array, a pydantic model or anything bound to a thread; every
value is a plain Python value, so it may be passed between the event loop and an engine thread
(`end_watch` is a function that makes a fresh watch each time, state of no other thread's).
An event class whose `ends_stream` is true is the last event of its stream (the bridge stops
there); a chat stream ends instead after one FinishEvent per choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from engines.errors import ContextTooLong

if TYPE_CHECKING:
    import numpy as np

FinishReason = Literal["stop", "length", "cancelled", "error"]
EndWatch = Callable[[str], int | None]  # GenerationRequest.end_watch's


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. temperature 0 means greedy; top_k 0 and top_p 1 mean no filter.

    Penalties: `presence_penalty` and `frequency_penalty` act on tokens generated so far (OpenAI's
    definition); `repetition_penalty` (1 = off) divides positive / multiplies negative logits of
    tokens in the last `REPETITION_WINDOW` tokens of prompt and output. `logit_bias` pairs are
    (token id, bias added to the logit).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        """Temperature 0, or one so small (< GREEDY_BELOW: the spec allows any value > 0) that
        scaling float32 logits by its reciprocal would overflow into inf/NaN rows: the draw
        such a temperature asks for is the argmax anyway."""
        return self.temperature < GREEDY_BELOW


GREEDY_BELOW = 1e-30
REPETITION_WINDOW = 64


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: prompt token ids in, text and token ids out."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    # Makes each choice's end watch (on the engine thread, pure Python, no MLX): fed each piece
    # of the choice's text as it goes out, it answers how many of the piece's characters to keep
    # where the output should end with them (a client that wants one tool call: the end of the
    # first), None to go on. The choice finishes "stop", naming no stop sequence.
    end_watch: Callable[[], EndWatch] | None = None
    n: int = 1
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob and the top k
    prompt_logprobs: bool = False  # also score the prompt's tokens (completions' echo)
    grammar: str | None = None  # an llguidance grammar the output must follow (constrain.py)
    images: tuple[ImageInput, ...] = ()  # in prompt order (vision models only)
    speculative: bool | None = None  # draft tokens ahead (None: as the model is configured)
    # The client's guess at the output (Predicted Outputs), as tokens: where the model drafts
    # by prompt lookup, drafts are looked up there first.
    prediction: tuple[int, ...] = ()
    # max_tokens is lowered to the room the prompt leaves, never refused for being large (the
    # client set none, so it is the room the prompt's ids leave; or the route clamps, as
    # Messages does): `within` applies it where the prompt turns out longer than its ids (a
    # vision model's images expanded).
    clamp_max_tokens: bool = False
    # Push an AdmittedEvent when the request leaves the queue (Messages streams: Anthropic's
    # `message_start` reports the prefix cache's share of the prompt before any output).
    report_admission: bool = False

    def within(self, context: int, prompt_tokens: int) -> GenerationRequest:
        """This request for a prompt of `prompt_tokens` (its images expanded): with
        `clamp_max_tokens`, max_tokens lowered to the room left in `context` where that is
        less and not empty; else as it is (the engine's fit check refuses what does not fit)."""
        room = context - prompt_tokens
        if not self.clamp_max_tokens or not 0 < room < self.max_tokens:
            return self
        return dataclasses.replace(self, max_tokens=room)


@dataclass(frozen=True)
class ImageInput:
    """One image of a chat prompt, decoded at the edge: RGB pixels (height, width, 3) uint8 and
    the SHA-256 of the bytes it came from (the key of the engine's caches)."""

    pixels: np.ndarray
    digest: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    accepted_prediction_tokens: int = 0  # drafts from the request's prediction the model kept


@dataclass(frozen=True)
class TokenLogprob:
    """One output (or prompt) token: `text` is the part of the output text this token completed
    (so the texts of a choice's tokens concatenate to its text), `raw` the token's own bytes,
    `logprob` its log-probability and `top` the most likely alternatives (token, text, logprob).
    `logprob` is None for the first prompt token, which nothing predicts."""

    token: int
    text: str
    raw: bytes
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass
class TokenEvent:
    """New output of choice `index`: `text` is whole UTF-8 characters, `token_ids` the tokens that
    produced it, `logprobs` (when asked) one entry per released token.

    Consecutive TokenEvents of the same choice may be merged when the reader is slower than the
    engine (see `merge`).
    """

    text: str
    token_ids: list[int]
    index: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def merge(self, later: TokenEvent) -> None:
        self.text += later.text
        self.token_ids.extend(later.token_ids)
        self.logprobs.extend(later.logprobs)


@dataclass(frozen=True)
class AdmittedEvent:
    """The request left the queue and its prefill began (pushed only where the request sets
    `report_admission`, before any other event of it): `prompt_tokens` as the engine counts them
    (a vision prompt's images expanded), `cached_tokens` of them read from the prefix cache —
    the usage its FinishEvents will report for the prompt."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class PromptEvent:
    """The prompt's own tokens with their logprobs (sent first, when `prompt_logprobs` is set)."""

    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class FinishEvent:
    """Choice `index` ended; `usage` counts this choice's tokens (the prompt once per choice).

    A request's stream ends after the FinishEvent of every choice.
    """

    reason: FinishReason
    usage: Usage
    index: int = 0
    stop_sequence: str | None = None  # the stop string that ended it, when one did


@dataclass(frozen=True)
class ErrorEvent:
    """The sequence failed after it was accepted; the last event of a stream."""

    ends_stream: ClassVar[bool] = True
    error: Exception


@dataclass(frozen=True)
class Segment:
    """A transcribed stretch of speech (times in seconds from the start of the recording)."""

    id: int
    seek: int  # mel frame where the window that produced it began
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[tuple[str, float, float], ...] = ()  # (word, start, end) when asked for


@dataclass(frozen=True)
class TranscriptionDone:
    """The last event of a transcription stream."""

    ends_stream: ClassVar[bool] = True

    language: str  # the language's full lower-case English name
    duration: float  # seconds of audio


# -- text to speech (the "tts" kind) ------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisRequest:
    """Text to speak: `text` is the whole input (the engine splits it at sentence ends)."""

    request_id: str
    text: str
    voice: str  # a name in TTSModelInfo.voices (checked by the engine's check_voice)
    speed: float = 1.0


@dataclass(frozen=True)
class AudioChunk:
    """The audio of the next piece of the input, in order: float32 mono samples in [-1, 1] at
    the model's sample rate. Chunks are never merged (each is one sentence's audio)."""

    samples: np.ndarray
    text: str  # the piece of the input it speaks
    tokens: int  # phoneme tokens the model read for it


@dataclass(frozen=True)
class SynthesisDone:
    """The last event of a synthesis stream."""

    ends_stream: ClassVar[bool] = True

    samples: int  # samples sent in all
    tokens: int  # phoneme tokens read in all


@dataclass(frozen=True)
class TTSModelInfo:
    """What the HTTP edge may know of a loaded text-to-speech model."""

    name: str
    path: str
    created: int
    sample_rate: int
    voices: tuple[str, ...]
    default_voice: str
    kind: str = "tts"


@dataclass(frozen=True)
class TTSLimits:
    max_waiting: int = 64  # syntheses accepted and not yet finished
    watchdog_s: float = 120.0


@dataclass(frozen=True)
class EmbeddingRequest:
    """Inputs to embed (or, on a cross-encoder, query–document pairs to score): token ids with the
    model's special tokens, each within its `max_tokens` (the edge checked)."""

    request_id: str
    inputs: list[list[int]]
    token_types: list[list[int]] | None = None  # segment ids of pairs (BERT cross-encoders)


@dataclass(frozen=True)
class EmbeddingsDone:
    """The last event of an embedding stream: one row per input, in input order — the pooled
    vector (unit length when the checkpoint normalises), or a cross-encoder's logits."""

    ends_stream: ClassVar[bool] = True

    vectors: np.ndarray  # (inputs, dimensions or labels), float32
    prompt_tokens: int


@dataclass(frozen=True)
class EmbeddingModelInfo:
    """What the HTTP edge may know of a loaded embedding model (plain values only)."""

    name: str
    path: str
    created: int
    task: Literal["embed", "score"]  # an embedder, or a cross-encoder (reranker)
    dimensions: int  # of a vector (embedders) or of the logits (cross-encoders)
    max_tokens: int  # longest input, special tokens included
    vocab_size: int
    special_prefix: tuple[int, ...]  # what the tokenizer puts around one input's tokens
    special_suffix: tuple[int, ...]
    pair_specials: int  # special tokens in a (query, document) pair: 3 for BERT, 4 for XLM-R
    normalized: bool
    matryoshka: bool
    pooling: str


@dataclass(frozen=True)
class EmbeddingLimits:
    max_batch: int = 64  # inputs per forward pass
    max_batch_tokens: int = 16384  # padded tokens per forward pass
    max_waiting: int = 64  # requests accepted and not yet finished
    watchdog_s: float = 120.0


Event = (
    TokenEvent | AdmittedEvent | PromptEvent | FinishEvent | ErrorEvent | Segment
    | TranscriptionDone | AudioChunk | SynthesisDone | EmbeddingsDone
)  # fmt: skip


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one engine's counters (plain values, safe to read from any thread)."""

    active: int  # choices accepted and not finished
    queued: int  # requests waiting for admission
    largest_batch: int
    tokens_generated: int
    drafted_tokens: int = 0  # speculative decoding: tokens proposed by drafters
    accepted_drafts: int = 0  # of which the model kept
    decode_row_steps: int = 0  # rows × decode passes (tokens per step = generated / this)
    prefix_cache_hits: int = 0
    prefix_cache_misses: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_bytes: int = 0
    stalled: bool = False  # busy, but the step loop has not moved for the watchdog's threshold
    failures: int = 0  # steps that raised (their requests failed; the engine went on)
    weights_bytes: int = 0  # memory the loaded model's parameters take
    max_batch: int = 0  # limits in force (chat: sized to the device unless set), 0: unknown
    max_waiting: int = 0
    limits_reason: str = ""  # where the limits came from (status page, logs)
    kv_bits: int | None = None  # quantized KV cache bits, None: unquantized
    fused_layers: int = 0  # layers whose projections were fused at load (a GPU)
    prefix_disk_hits: int = 0  # prefix cache entries read back from disk
    prefix_disk_entries: int = 0
    prefix_disk_bytes: int = 0
    fault: str = ""  # why the engine cannot serve ('' while it can): a lost distributed group


@dataclass(frozen=True)
class ChatModelInfo:
    """What the HTTP edge may know of a loaded model (plain values only)."""

    name: str
    path: str
    context_length: int
    eos_token_ids: frozenset[int]
    created: int
    fim_tokens: tuple[str, str, str] | None = (
        None  # (prefix, suffix, middle) when the vocab has them
    )
    reasoning: bool = False  # the model writes reasoning blocks (think tags or harmony channels)
    think_tags: tuple[str, str] = ("<think>", "</think>")  # its reasoning block's tags
    tool_format: str = "json_tools"  # how it writes tool calls (engines/llm/chat_formats.py)
    untagged_tool_calls: bool = True  # calls written without the format's tags count (server/)
    vision: bool = False  # the checkpoint has a vision tower: prompts may hold images
    # A tool's result may hold images: a vision model whose template has no tools, so tool
    # results are user turns mlxd writes (engines/llm/templates.py), where an image is placed as
    # in any user turn. A template with tools of its own may drop a tool message's images.
    tool_images: bool = False

    def fit(self, prompt_tokens: int, max_tokens: int | None, param: str = "messages") -> int:
        """The max_tokens to use (all the room left when None), or ContextTooLong."""
        limit = self.context_length
        if prompt_tokens >= limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, your {param} "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the {param}.",
                param=param,
                prompt_tokens=prompt_tokens,
                limit=limit,
            )
        if max_tokens is None:
            return limit - prompt_tokens
        if prompt_tokens + max_tokens > limit:
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, "
                f"{max_tokens} in the completion). Please reduce the length of the {param} or "
                "completion.",
                param="max_tokens",
                prompt_tokens=prompt_tokens,
                limit=limit,
                max_tokens=max_tokens,
            )
        return max_tokens


FIM_TOKEN_SETS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, StarCoder2
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
)


@dataclass(frozen=True)
class ChatLimits:
    """Admission control: running choices, waiting requests and the KV memory budget."""

    max_batch: int | None = None  # None: sized to the KV budget at load (engines/llm/limits.py)
    max_waiting: int | None = None  # None: sized with max_batch at load
    kv_budget_bytes: int | None = None  # None: derived from the device's memory at load
    kv_bits: int | None = None  # quantized KV cache (4 or 8 bits), None: the model's dtype
    kv_group_size: int = 64  # elements per quantization group (scale + bias each)
    prefix_disk_dir: str | None = None  # where prefix cache entries spill (None: memory only)
    prefix_disk_bytes: int = 0  # most bytes the spilled entries take on disk
    prefix_cache_bytes: int = 1 << 30
    watchdog_s: float = 120.0  # busy with no loop progress this long → reported stalled
    context_length: int | None = None  # a cap below the model's own context, if set
    chat_template: str | None = None  # replaces the tokenizer's chat template, if set
    untagged_tool_calls: bool = True  # see ChatModelInfo
    tool_format: str | None = None  # replaces the format read from the checkpoint, if set
    speculative: str | None = None  # "prompt_lookup", or a draft model's directory (its path)
    speculative_tokens: int = 0  # most tokens drafted per step (0: the default)
    warmup_rows: int | None = None  # synthetic rows warming kernels after load (None: per device)
    fuse_projections: bool | None = None  # q/k/v, gate/up as one product each (None: CUDA)


@dataclass(frozen=True)
class TranscriptionRequest:
    """Plain values only: the features were computed off the engine thread."""

    request_id: str
    mel: np.ndarray  # (frames, n_mels), the recording followed by 30 s of silence
    content_frames: int  # frames of the recording itself
    task: str = "transcribe"  # or "translate"
    language: str | None = None  # ISO-639-1 code; None: detect (multilingual) or English
    prompt: str | None = None
    temperature: float = 0.0  # 0: the fallback schedule; > 0: that temperature only
    seed: int | None = None
    word_timestamps: bool = False


@dataclass(frozen=True)
class SpeechModelInfo:
    """What the HTTP edge may know of a loaded speech model."""

    name: str
    path: str
    created: int
    multilingual: bool
    n_mels: int
    kind: str = "speech"


@dataclass(frozen=True)
class SpeechLimits:
    max_batch: int = 8  # windows decoded together (one per request)
    encoder_batch: int | None = None  # windows per MLX encoder pass (GPUs); default: max_batch
    max_waiting: int = 64  # transcriptions accepted and not yet finished
    watchdog_s: float = 120.0
