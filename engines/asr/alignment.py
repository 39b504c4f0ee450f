"""Word timestamps: cross-attention alignment with dynamic time warping (whisper's method).

For one decoded window, the decoder is run once more over [start-of-transcript sequence,
<|notimestamps|>, text tokens, end-of-text]; the cross-attention weights of the model's alignment
heads (listed in its config) say which audio positions each token attended to. Normalised per
head, median-filtered along time and averaged, they form a token × time cost matrix whose cheapest
monotonic path (DTW) gives each token's time; a word starts where its first token's path begins.
Words are then tightened onto loud frames like segments (timing.py), so no word lies inside a
silence, and punctuation is attached to the neighbouring word.

Invariants: words come in order with start ≤ end, inside their window; their texts concatenate to
the window's text (leading spaces included).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from engines.asr.vocab import WhisperVocab
from engines.asr.whisper import Whisper

AUDIO_POSITIONS_PER_SECOND = 50  # one encoder position every 20 ms
MEDIAN_FILTER_WIDTH = 7
PREPENDED = "\"'“¿([{-"
APPENDED = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` (tokens × frames): (token, frame) indices."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((rows + 1, cols + 1), np.int8)
    cost_rows = cost.tolist()
    for i in range(1, rows + 1):
        above, here = total[i - 1].tolist(), total[i].tolist()
        steps = trace[i]
        row = cost_rows[i - 1]
        for j in range(1, cols + 1):
            diagonal, up, left = above[j - 1], above[j], here[j - 1]
            if diagonal < up and diagonal < left:
                here[j], steps[j] = row[j - 1] + diagonal, 0
            elif up < diagonal and up < left:
                here[j], steps[j] = row[j - 1] + up, 1
            else:
                here[j], steps[j] = row[j - 1] + left, 2
        total[i] = here
    trace[0, :], trace[:, 0] = 2, 1
    i, j = rows, cols
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    indices = np.array(path)
    return indices[:, 0], indices[:, 1]


def _median_filter(values: np.ndarray, width: int) -> np.ndarray:
    pad = width // 2
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def split_words(vocab: WhisperVocab, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """Group text tokens into words: a word starts at a token that begins with a space or is
    punctuation; tokens that end inside a UTF-8 character stay with the next one."""
    words: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    for token in tokens:
        pending.append(token)
        raw = vocab.text_bytes(pending)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # an incomplete character: wait for the next token
        starts_word = text.startswith(" ") or text.strip() in string.punctuation
        if words and not starts_word:
            words[-1] = (words[-1][0] + text, words[-1][1] + pending)
        else:
            words.append((text, pending))
        pending = []
    if pending:
        words.append((vocab.decode(pending), pending))
    return words


def _merge_punctuation(words: list[Word]) -> list[Word]:
    merged: list[Word] = []
    for word in words:
        bare = word.word.strip()
        if merged and bare and all(ch in APPENDED for ch in bare):
            last = merged[-1]
            merged[-1] = Word(last.word + word.word, last.start, max(last.end, word.end))
        else:
            merged.append(word)
    out: list[Word] = []
    carry: Word | None = None
    for word in merged:
        bare = word.word.strip()
        if bare and all(ch in PREPENDED for ch in bare) and word is not merged[-1]:
            carry = word if carry is None else Word(carry.word + word.word, carry.start, word.end)
            continue
        if carry is not None:
            word = Word(carry.word + word.word.lstrip(), carry.start, word.end)
            carry = None
        out.append(word)
    return out


def align_words(
    model: Whisper,
    vocab: WhisperVocab,
    features: mx.array,
    start_sequence: list[int],
    text_tokens: list[int],
    content_frames: int,
    alignment_heads: list[tuple[int, int]],
    window_start: float,
) -> list[Word]:
    """Word timings for one window (`features`: (1, ctx, state)); times from the recording's
    start. `content_frames`: mel frames of this window that hold audio."""
    if not text_tokens:
        return []
    tokens = [*start_sequence, vocab.no_timestamps, *text_tokens, vocab.eot]
    scores = model.decoder.cross_attention_scores(mx.array([tokens]), features)
    positions = max(1, content_frames // 2)
    by_head = np.stack(
        [np.array(scores[layer][0, head, :, :positions]) for layer, head in alignment_heads]
    )
    by_head = np.exp(by_head - by_head.max(axis=-1, keepdims=True))
    by_head /= by_head.sum(axis=-1, keepdims=True)
    mean = by_head.mean(axis=-2, keepdims=True)
    std = by_head.std(axis=-2, keepdims=True) + 1e-9
    by_head = _median_filter((by_head - mean) / std, MEDIAN_FILTER_WIDTH)
    matrix = by_head.mean(axis=0)[len(start_sequence) : -1]  # rows: <|notimestamps|>, text
    token_path, time_path = dtw(-matrix)
    jumps = np.concatenate([[True], np.diff(token_path) > 0])
    jump_times = time_path[jumps] / AUDIO_POSITIONS_PER_SECOND
    groups = split_words(vocab, text_tokens)
    boundaries = np.concatenate([[0], np.cumsum([len(t) for _, t in groups])])
    words = []
    for index, (text, _) in enumerate(groups):
        start = float(jump_times[min(boundaries[index], len(jump_times) - 1)])
        end = float(jump_times[min(boundaries[index + 1], len(jump_times) - 1)])
        words.append(Word(text, window_start + start, window_start + max(start, end)))
    return _merge_punctuation(words)
