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
        self._base = mx.array(base)
        self._ids = mx.arange(n_vocab)

    def decode(self, audio_features: mx.array, tasks: list[WindowTask]) -> list[WindowResult]:
        """Decode one window per row of `audio_features` (batch, ctx, state)."""
        vocab = self.vocab
        tsb, eot = vocab.timestamp_begin, vocab.eot
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
        temperatures = np.array([task.temperature for task in tasks], np.float32)
        rngs = [np.random.default_rng(task.seed) for task in tasks]
        no_speech_probs = [float(p) for p in host_list(no_speech)]
        for step in range(self.sample_len):
            mask = self._rule_mask([sampled[r] for r in live], first=step == 0)
            filtered = logits + mask
            logprobs = filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)
            timestamp_mass = mx.logsumexp(logprobs[:, tsb:], axis=-1)
            best_text = mx.max(logprobs[:, :tsb], axis=-1)
            force = (timestamp_mass > best_text)[:, None] & (self._ids[None, :] < tsb)
            filtered = mx.where(force, -mx.inf, filtered)
            logprobs = filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)
            tokens = self._choose(filtered, temperatures[live], [rngs[r] for r in live])
            chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
            mx.eval(tokens, chosen)
            keep: list[int] = []
            for batch_row, (token, logprob) in enumerate(
                zip(host_list(tokens), host_list(chosen), strict=True)
            ):
                row = live[batch_row]
                if token == eot:
                    sum_logprobs[row] += logprob
                    continue
                sampled[row].append(token)
                sum_logprobs[row] += logprob
                if len(tasks[row].prompt) + len(sampled[row]) < self.model.dims.n_text_ctx:
                    keep.append(batch_row)
            if not keep:
                break
            if len(keep) < len(live):
                state = state.select(keep)
                tokens = tokens[mx.array(keep)]
            live = [live[i] for i in keep]
            logits = self.model.decoder.logits(self.model.decoder(tokens[:, None], state)[:, -1])

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

    def _rule_mask(self, histories: list[list[int]], first: bool) -> mx.array:
        """Additive mask (rows, vocab) of the suppression and timestamp rules for each row."""
        tsb, eot = self.vocab.timestamp_begin, self.vocab.eot
        n_vocab = self.model.dims.n_vocab
        block_below = np.zeros(len(histories), np.int32)  # ids < this are blocked
        ts_low = np.zeros(len(histories), np.int32)  # timestamp ids < tsb + this are blocked
        ts_high = np.full(len(histories), n_vocab, np.int32)  # timestamp ids > tsb + this too
        for row, history in enumerate(histories):
            if first:
                block_below[row] = tsb
                ts_high[row] = round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)
                continue
            last_ts = len(history) >= 1 and history[-1] >= tsb
            penultimate_ts = len(history) < 2 or history[-2] >= tsb
            if last_ts:
                if penultimate_ts:
                    ts_high[row] = -1  # a pair just closed: text next
                else:
                    block_below[row] = eot  # a lone timestamp: another one or end-of-text
            stamps = [t for t in history if t >= tsb]
            if stamps:
                last = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
                ts_low[row] = last - tsb
        ids = self._ids[None, :]
        blocked = ids < mx.array(block_below)[:, None]
        relative = ids - tsb
        blocked = blocked | (
            (ids >= tsb)
            & ((relative < mx.array(ts_low)[:, None]) | (relative > mx.array(ts_high)[:, None]))
        )
        return mx.where(blocked, -mx.inf, self._base[None, :])

    @staticmethod
    def _choose(logits: mx.array, temperatures: np.ndarray, rngs: list) -> mx.array:
        greedy = mx.argmax(logits, axis=-1)
        if not (temperatures > 0).any():
            return greedy
        # Each row samples with its own key, so its tokens do not depend on its batch mates.
        keys = mx.stack([mx.random.key(int(rng.integers(2**31))) for rng in rngs])
        scaled = logits / mx.array(np.maximum(temperatures, 1e-6))[:, None]
        sampled = mx.vmap(lambda key, row: mx.random.categorical(row, key=key))(keys, scaled)
        return mx.where(mx.array(temperatures > 0), sampled, greedy)


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
