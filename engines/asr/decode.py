"""Decoding 30 s windows: windows (from different requests) decoded together, continuously.

Implements whisper's decoding rules per row, vectorised over the batch on the host:
- suppressed tokens (the model's list, <|notimestamps|>); at the start only a timestamp (so no
  blank and no end-of-text);
- timestamps: the first token is a timestamp ≤ 1 s; timestamps come in pairs and never go
  backwards; after a lone timestamp only a timestamp or end-of-text may follow; when the
  timestamps together are likelier than any text token, a timestamp is forced;
- greedy at temperature 0, sampling otherwise;
and measures what the fallback and the silence guard need: average log-probability, compression
ratio and the no-speech probability.

Invariant: each row's tokens depend only on its own prompt, window and temperature (and, when
sampling, its own random key), never on the other rows of the batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from engines.asr.audio import FRAMES_PER_SECOND
from engines.asr.vocab import WhisperVocab
from engines.asr.whisper import DecoderState, Whisper
from engines.readback import host_list
from engines.types import GREEDY_BELOW

TIME_PRECISION = 0.02  # seconds per timestamp token
INPUT_STRIDE = 2  # mel frames per audio-feature position
MAX_INITIAL_TIMESTAMP = 1.0  # seconds


@dataclass(frozen=True)
class WindowTask:
    """One window to decode: the decoder prompt ends with the start-of-transcript sequence."""

    prompt: list[int]
    sot_index: int  # position of <|startoftranscript|> in `prompt`
    temperature: float
    seed: int


@dataclass(frozen=True)
class WindowResult:
    tokens: list[int]  # sampled tokens, end-of-text excluded
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class _Row:
    key: int  # the caller's handle for this window
    task: WindowTask
    rng: np.random.Generator
    no_speech_prob: float
    tokens: list[int] = field(default_factory=list)  # sampled so far, end-of-text excluded
    sum_logprob: float = 0.0


class WindowBatch:
    """Windows decoded together, continuously: windows join (`add`) and leave (finished, or
    `remove`d) between steps, so a window never waits for another one to finish.

    Built once per engine (it holds the token masks); all methods run on the engine thread.
    """

    def __init__(self, model: Whisper, vocab: WhisperVocab, suppress_ids: list[int]) -> None:
        self.model = model
        self.vocab = vocab
        n_vocab = model.dims.n_vocab
        self.sample_len = model.dims.n_text_ctx // 2
        base = np.zeros(n_vocab, np.float32)
        base[[i for i in suppress_ids if 0 <= i < n_vocab]] = -np.inf
        base[vocab.no_timestamps] = -np.inf
        self._base = base
        self._rows: list[_Row] = []
        self._state: DecoderState | None = None
        self._logits: mx.array | None = None  # next-token logits, one row per `_rows` entry

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self, cross_kv: list[tuple[mx.array, mx.array]], tasks: list[WindowTask], keys: list[int]
    ) -> None:
        """Start decoding one window per row of `cross_kv` (each layer's cross-attention keys
        and values of the windows, as `TextDecoder.cross_kv` makes them)."""
        decoder = self.model.decoder
        longest = max(len(task.prompt) for task in tasks)
        pads = np.array([longest - len(task.prompt) for task in tasks])
        prompt = np.zeros((len(tasks), longest), np.int32)
        for row, task in enumerate(tasks):
            prompt[row, pads[row] :] = task.prompt
        state = DecoderState(cross_kv, pads)
        hidden = decoder(mx.array(prompt), state)
        sot_rows = mx.array([int(pads[r]) + task.sot_index for r, task in enumerate(tasks)])
        sot_hidden = hidden[mx.arange(len(tasks)), sot_rows]
        no_speech = mx.softmax(decoder.logits(sot_hidden), axis=-1)[:, self.vocab.no_speech]
        logits = decoder.logits(hidden[:, -1])
        for key, task, probability in zip(keys, tasks, host_list(no_speech), strict=True):
            self._rows.append(_Row(key, task, np.random.default_rng(task.seed), probability))
        if self._state is None or self._logits is None:
            self._state, self._logits = state, logits
        else:
            self._state = self._state.merge(state)
            self._logits = mx.concatenate([self._logits, logits])

    def remove(self, keys: set[int]) -> None:
        """Stop decoding these windows (their requests were cancelled)."""
        self._keep([i for i, row in enumerate(self._rows) if row.key not in keys])

    def clear(self) -> None:
        self._rows, self._state, self._logits = [], None, None

    def step(self) -> list[tuple[int, WindowResult]]:
        """Choose every window's next token; return the windows that finished, by key."""
        if self._logits is None or self._state is None:
            return []
        tokens, logprobs = self._choose(np.array(self._logits, dtype=np.float32))
        finished: list[tuple[int, WindowResult]] = []
        keep: list[int] = []
        n_text_ctx = self.model.dims.n_text_ctx
        for index, (row, token, logprob) in enumerate(
            zip(self._rows, tokens, logprobs, strict=True)
        ):
            row.sum_logprob += logprob
            if token != self.vocab.eot:
                row.tokens.append(token)
                if (
                    len(row.tokens) < self.sample_len
                    and len(row.task.prompt) + len(row.tokens) < n_text_ctx
                ):
                    keep.append(index)
                    continue
            finished.append((row.key, self._result(row)))
        self._keep(keep)
        if self._rows and self._state is not None:
            next_tokens = mx.array([[row.tokens[-1]] for row in self._rows])
            decoder = self.model.decoder
            self._logits = decoder.logits(decoder(next_tokens, self._state)[:, -1])
            mx.async_eval(self._logits)  # computed while the engine handles finished windows
        return finished

    def _keep(self, indices: list[int]) -> None:
        if len(indices) == len(self._rows):
            return
        if not indices or self._state is None or self._logits is None:
            self.clear()
            return
        self._rows = [self._rows[i] for i in indices]
        self._state = self._state.select(indices)
        self._logits = self._logits[mx.array(indices)]

    def _result(self, row: _Row) -> WindowResult:
        return WindowResult(
            tokens=row.tokens,
            avg_logprob=row.sum_logprob / (len(row.tokens) + 1),
            no_speech_prob=row.no_speech_prob,
            temperature=row.task.temperature,
            compression_ratio=compression_ratio(self.vocab.decode(row.tokens)),
        )

    def _choose(self, logits: np.ndarray) -> tuple[list[int], list[float]]:
        """Each row's next token and its log-probability (after the rules, before temperature).

        On the host in numpy, for every device: a few vectorised passes over (rows, vocab) cost
        far less than the dozen small MLX ops they replace (and numpy's exp is vectorised where
        MLX's CPU exp is not); each row samples from its own generator, so rows never influence
        each other.
        """
        tsb, eot = self.vocab.timestamp_begin, self.vocab.eot
        logits += self._base
        for row, history in enumerate(entry.tokens for entry in self._rows):
            if not history:  # the first token is a timestamp, at most MAX_INITIAL_TIMESTAMP in
                logits[row, :tsb] = -np.inf
                logits[row, tsb + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION) + 1 :] = -np.inf
                continue
            last_ts = len(history) >= 1 and history[-1] >= tsb
            penultimate_ts = len(history) < 2 or history[-2] >= tsb
            if last_ts:
                if penultimate_ts:
                    logits[row, tsb:] = -np.inf  # a pair just closed: text next
                else:
                    logits[row, :eot] = -np.inf  # a lone timestamp: another one or end-of-text
            stamps = [t for t in history if t >= tsb]
            if stamps:  # timestamps never go back; a segment has a non-zero length
                last = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
                logits[row, tsb:last] = -np.inf
        logprobs = _log_softmax(logits)
        with np.errstate(divide="ignore"):
            timestamp_mass = np.log(np.exp(logprobs[:, tsb:]).sum(axis=-1))
        force = timestamp_mass > logprobs[:, :tsb].max(axis=-1)
        if force.any():  # timestamps together likelier than any text token: a timestamp
            logits[force, :tsb] = -np.inf
            logprobs = _log_softmax(logits)
        tokens: list[int] = []
        for row, entry in enumerate(self._rows):
            temperature = entry.task.temperature
            # Gumbel-max: a sample of softmax(logits / temperature); below GREEDY_BELOW the
            # division overflows into inf rows, and the argmax is what is asked anyway.
            if temperature >= GREEDY_BELOW:
                gumbel = entry.rng.gumbel(size=logits.shape[1])
                tokens.append(int(np.argmax(logits[row] / temperature + gumbel)))
            else:
                tokens.append(int(np.argmax(logits[row])))
        chosen = logprobs[np.arange(len(tokens)), tokens]
        return tokens, [float(value) for value in chosen]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class RawSegment:
    start: float  # seconds from the start of the recording
    end: float
    tokens: list[int]


def split_segments(
    tokens: list[int], timestamp_begin: int, window_start: float, window_frames: int
) -> tuple[list[RawSegment], int]:
    """Whisper's segmentation of one decoded window: (segments, mel frames to advance).

    A window ends either on a lone timestamp (all its speech was transcribed: advance a whole
    window) or mid-segment (advance only to the last complete segment's end, so the cut-off
    speech is decoded again at the start of the next window).
    """
    is_stamp = [t >= timestamp_begin for t in tokens]
    single_ending = is_stamp[-2:] == [False, True]
    boundaries = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
    segments: list[RawSegment] = []
    if boundaries:
        if single_ending:
            boundaries.append(len(tokens))
        last = 0
        for boundary in boundaries:
            piece = tokens[last:boundary]
            start = (piece[0] - timestamp_begin) * TIME_PRECISION
            end = (piece[-1] - timestamp_begin) * TIME_PRECISION
            segments.append(RawSegment(window_start + start, window_start + end, piece))
            last = boundary
        if single_ending:
            return segments, window_frames
        last_position = tokens[last - 1] - timestamp_begin
        return segments, last_position * INPUT_STRIDE
    duration = window_frames / FRAMES_PER_SECOND
    stamps = [t for t in tokens if t >= timestamp_begin]
    if stamps and stamps[-1] != timestamp_begin:
        duration = (stamps[-1] - timestamp_begin) * TIME_PRECISION
    return [RawSegment(window_start, window_start + duration, tokens)], window_frames
