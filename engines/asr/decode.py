"""Decoding 30 s windows: a batch of windows (from different requests) decoded together.

Implements whisper's decoding rules per row, vectorised over the batch in MLX:
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
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from engines.asr.audio import FRAMES_PER_SECOND
from engines.asr.vocab import WhisperVocab
from engines.asr.whisper import Whisper
from engines.llm.sampling import host_list

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


class WindowDecoder:
    """Decodes batches of windows on one model; built once per engine (holds the token masks)."""

    def __init__(self, model: Whisper, vocab: WhisperVocab, suppress_ids: list[int]) -> None:
        self.model = model
        self.vocab = vocab
        n_vocab = model.dims.n_vocab
        self.sample_len = model.dims.n_text_ctx // 2
        base = np.zeros(n_vocab, np.float32)
        base[[i for i in suppress_ids if 0 <= i < n_vocab]] = -np.inf
        base[vocab.no_timestamps] = -np.inf
        self._base = base

    def decode(self, audio_features: mx.array, tasks: list[WindowTask]) -> list[WindowResult]:
        """Decode one window per row of `audio_features` (batch, ctx, state)."""
        vocab = self.vocab
        eot = vocab.eot
        longest = max(len(task.prompt) for task in tasks)
        pads = np.array([longest - len(task.prompt) for task in tasks])
        prompt = np.zeros((len(tasks), longest), np.int32)
        for row, task in enumerate(tasks):
            prompt[row, pads[row] :] = task.prompt
        state = self.model.decoder.start(audio_features, pads)
        hidden = self.model.decoder(mx.array(prompt), state)
        sot_rows = mx.array([int(pads[r]) + task.sot_index for r, task in enumerate(tasks)])
        sot_hidden = hidden[mx.arange(len(tasks)), sot_rows]
        no_speech = mx.softmax(self.model.decoder.logits(sot_hidden), axis=-1)[:, vocab.no_speech]
        logits = self.model.decoder.logits(hidden[:, -1])

        sampled: list[list[int]] = [[] for _ in tasks]
        sum_logprobs = [0.0] * len(tasks)
        live = list(range(len(tasks)))  # original row of each batch row still decoding
        rngs = [np.random.default_rng(task.seed) for task in tasks]
        no_speech_probs = [float(p) for p in host_list(no_speech)]
        for step in range(self.sample_len):
            host_logits = np.array(logits, dtype=np.float32)
            histories = [sampled[r] for r in live]
            tokens, logprobs = self._choose(
                host_logits,
                histories,
                [tasks[r] for r in live],
                [rngs[r] for r in live],
                first=step == 0,
            )
            keep: list[int] = []
            for batch_row, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
                row = live[batch_row]
                sum_logprobs[row] += logprob
                if token == eot:
                    continue
                sampled[row].append(token)
                if len(tasks[row].prompt) + len(sampled[row]) < self.model.dims.n_text_ctx:
                    keep.append(batch_row)
            if not keep:
                break
            if len(keep) < len(live):
                state = state.select(keep)
            live = [live[i] for i in keep]
            next_tokens = mx.array([[sampled[r][-1]] for r in live])
            logits = self.model.decoder.logits(self.model.decoder(next_tokens, state)[:, -1])

        results = []
        for row, task in enumerate(tasks):
            text = vocab.decode(sampled[row])
            results.append(
                WindowResult(
                    tokens=sampled[row],
                    avg_logprob=sum_logprobs[row] / (len(sampled[row]) + 1),
                    no_speech_prob=no_speech_probs[row],
                    temperature=task.temperature,
                    compression_ratio=compression_ratio(text),
                )
            )
        return results

    def _choose(
        self,
        logits: np.ndarray,
        histories: list[list[int]],
        tasks: list[WindowTask],
        rngs: list[np.random.Generator],
        first: bool,
    ) -> tuple[list[int], list[float]]:
        """Each row's next token and its log-probability (after the rules, before temperature).

        On the host in numpy, for every device: a few vectorised passes over (rows, vocab) cost
        far less than the dozen small MLX ops they replace (and numpy's exp is vectorised where
        MLX's CPU exp is not); each row samples from its own generator, so rows never influence
        each other.
        """
        tsb, eot = self.vocab.timestamp_begin, self.vocab.eot
        logits += self._base
        for row, history in enumerate(histories):
            if first:  # the first token is a timestamp, at most MAX_INITIAL_TIMESTAMP in
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
        for row, task in enumerate(tasks):
            if task.temperature > 0:  # Gumbel-max: a sample of softmax(logits / temperature)
                gumbel = rngs[row].gumbel(size=logits.shape[1])
                tokens.append(int(np.argmax(logits[row] / task.temperature + gumbel)))
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
