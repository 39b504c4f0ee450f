"""ASREngine: whisper on its own engine thread, transcribing concurrent requests together.

Windows are decoded by continuous batching: each step, transcriptions waiting for their next
30 s window (oldest first, while the batch has fewer than `max_batch` rows) have it encoded
(batched on GPUs, one by one on the CPU, where batching gains nothing) and join the decode
batch; then every row decodes one token. A window that finishes leaves the batch at once: if
it fails the quality thresholds it rejoins at the next temperature (its encoding kept), else its
segments are pushed (so transcriptions can stream) and its transcription waits for its next
window.

Invariants:
- All MLX work happens on the engine thread; requests arrive as plain values (numpy features).
- Each transcription has at most one window in flight; transcriptions are admitted oldest
  first, so every accepted request finishes; cancelled requests leave at the next step.
- Segment times are monotonic: no segment starts before the previous one ended, and none ends
  after the recording; times are tightened onto the speech they cover (timing.py).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.asr.alignment import align_words
from engines.asr.audio import FRAMES_PER_SECOND, N_FRAMES
from engines.asr.decode import WindowBatch, WindowResult, WindowTask, split_segments
from engines.asr.fallback import (
    PROMPT_RESET_TEMPERATURE,
    best_attempt,
    is_silence,
    needs_fallback,
    temperatures,
)
from engines.asr.host_encoder import PROMPT_MATH, HostEncoder
from engines.asr.timing import loud_frames, tighten
from engines.asr.vocab import LANGUAGES, WhisperVocab, decoding_language
from engines.asr.whisper import DecoderState
from engines.bridge import RequestStream
from engines.readback import host_list
from engines.types import (
    EngineStats,
    ErrorEvent,
    Segment,
    SpeechLimits,
    SpeechModelInfo,
    TranscriptionDone,
    TranscriptionRequest,
)
from engines.worker import EngineThread

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    request: TranscriptionRequest
    stream: RequestStream
    seek: int = 0
    language: str | None = None
    context: list[int] = field(default_factory=list)  # tokens the next window is conditioned on
    segments: int = 0
    last_end: float = 0.0  # end of the last segment sent: the next may not start before it
    loud: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    key: int = 0  # names this job's row in the decode batch
    features: Any = None  # the current window's encoder output (1, ctx, state), once encoded
    cross_kv: Any = None  # and the decoder's cross-attention keys and values for it
    attempts: list[WindowResult] = field(default_factory=list)  # of the current window
    decoding: bool = False  # a row of the current window is in the decode batch


class ASREngine(EngineThread):
    kind = "speech"

    def __init__(self, name: str, path: Path, limits: SpeechLimits | None = None) -> None:
        super().__init__(name)
        self.path = path
        self.limits = limits or SpeechLimits()
        self.info: SpeechModelInfo | None = None
        self.largest_batch = 0
        self.encoder_batch = 0  # set at load
        self._jobs: deque[_Job] = deque()
        self._model: Any = None
        self._vocab: WhisperVocab | None = None
        self._batch: WindowBatch | None = None
        self._host_encoder: HostEncoder | None = None
        self._keys = itertools.count()
        self._alignment_heads: list[tuple[int, int]] = []

    # -- any thread ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return self.accepted

    def stats(self) -> EngineStats:
        return EngineStats(
            active=self.accepted,
            queued=max(0, self.accepted - self.limits.max_batch),
            largest_batch=self.largest_batch,
            tokens_generated=0,
            stalled=self.stalled(self.accepted > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
        )

    def check_language(self, language: str | None, task: str) -> str | None:
        """The ISO code to decode with; InvalidRequest (naming the param) when unusable."""
        assert self.info is not None
        known = self._vocab.language_ids if self._vocab is not None else None
        return decoding_language(self.info, language, task, known)

    def submit(self, request: TranscriptionRequest) -> RequestStream:
        """Queue a transcription; segments and then TranscriptionDone arrive on the stream."""
        self.accept_request(self.limits.max_waiting, "transcriptions", retry_after_s=2)
        stream = RequestStream(request.request_id)
        # Unseeded requests draw from seed 0: the same audio gives the same transcript (the
        # fallback samples only when greedy decoding failed the quality thresholds).
        seed = 0 if request.seed is None else request.seed
        self.post(_Job(request, stream, rng=np.random.default_rng(seed)))
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import json

        import mlx.core as mx

        from engines.asr.whisper import load_whisper

        self._model = load_whisper(self.path)
        self.measure_weights(self._model)
        self._vocab = WhisperVocab(self.path)
        meta = json.loads((self.path / "mlxd.json").read_text())
        self._batch = WindowBatch(self._model, self._vocab, meta.get("suppress_ids", []))
        layers, heads = self._model.dims.n_text_layer, self._model.dims.n_text_head
        self._alignment_heads = [
            (int(layer), int(head))
            for layer, head in meta.get("alignment_heads", [])
            if layer < layers and head < heads
        ] or [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]
        # On the CPU the encoder runs in numpy (host_encoder says why), one window at a time:
        # it is compute-bound there, so batching windows gains nothing.
        on_cpu = mx.default_device() == mx.cpu
        self._host_encoder = HostEncoder(self._model) if on_cpu else None
        self._model.decoder.prompt_math = PROMPT_MATH if on_cpu else None
        self.encoder_batch = self.limits.encoder_batch or self.limits.max_batch
        self.info = SpeechModelInfo(
            name=self.name,
            path=str(self.path),
            created=int(time.time()),
            multilingual=self._vocab.multilingual,
            n_mels=self._model.dims.n_mels,
        )

    def unload(self) -> None:
        import mlx.core as mx

        self._model = self._batch = self._host_encoder = None
        mx.clear_cache()

    def handle(self, message: Any) -> None:
        assert self._vocab is not None
        message.context = initial_context(self._vocab, message.request.prompt)
        message.loud = loud_frames(message.request.mel, message.request.content_frames)
        message.key = next(self._keys)
        self._jobs.append(message)

    def has_work(self) -> bool:
        return bool(self._jobs)

    def fail_all(self, error: Exception) -> None:
        if self._batch is not None:
            self._batch.clear()
        while self._jobs:
            self._finish(self._jobs.popleft(), ErrorEvent(error))

    def step(self) -> None:
        """Admit waiting windows into the decode batch, then decode one token of every row."""
        batch = self._batch
        assert batch is not None
        cancelled = [job for job in self._jobs if job.stream.cancelled]
        if cancelled:
            batch.remove({job.key for job in cancelled})
            for job in cancelled:
                self._jobs.remove(job)
                self.finish_request()
        self._admit()
        self.largest_batch = max(self.largest_batch, len(batch))
        finished = batch.step()
        if finished:
            by_key = {job.key: job for job in self._jobs}
            for key, result in finished:
                self._window_done(by_key[key], result)
        if not batch:
            import mlx.core as mx

            mx.clear_cache()  # idle: give the windows' buffers back

    def _admit(self) -> None:
        """Oldest first, while the batch has room: encode the next window of transcriptions
        that need one (language identified on the first), and start a row for each window
        waiting to be decoded (new, or again at the next temperature)."""

        batch = self._batch
        assert batch is not None
        room = self.limits.max_batch - len(batch)
        joining = list(itertools.islice((j for j in self._jobs if not j.decoding), room))
        if not joining:
            return
        fresh = [job for job in joining if job.features is None]
        self._encode(fresh)
        self._detect_languages(fresh)
        tasks = [self._task(job) for job in joining]
        batch.add(_stacked_cross_kv(joining), tasks, [job.key for job in joining])
        for job in joining:
            job.decoding = True

    def _encode(self, jobs: list[_Job]) -> None:
        """Encode each job's next window: its features, and the decoder's cross-attention keys
        and values for it (on the CPU in numpy, one window at a time; else batched in MLX)."""
        import mlx.core as mx

        host = self._host_encoder
        if host is not None:
            for job in jobs:
                features = host(self._window(job)[None])
                job.features = mx.array(features)
                job.cross_kv = [(mx.array(k), mx.array(v)) for k, v in host.cross_kv(features[0])]
            return
        for start in range(0, len(jobs), self.encoder_batch):
            group = jobs[start : start + self.encoder_batch]
            features = self._model.encoder(mx.array(np.stack([self._window(j) for j in group])))
            cross_kv = self._model.decoder.cross_kv(features)
            mx.eval(features, cross_kv)
            for row, job in enumerate(group):
                job.features = features[row : row + 1]
                job.cross_kv = [(k[row : row + 1], v[row : row + 1]) for k, v in cross_kv]

    def _window_done(self, job: _Job, result: WindowResult) -> None:
        """A row finished: decode the window again hotter, or take the best attempt."""
        job.decoding = False
        job.attempts.append(result)
        if len(job.attempts) < len(self._schedule(job)) and needs_fallback(result):
            return  # rejoins at the next step, at the next temperature
        features, attempts = job.features, job.attempts
        job.features, job.cross_kv, job.attempts = None, None, []
        self._advance(job, best_attempt(attempts), features)

    @staticmethod
    def _window(job: _Job) -> np.ndarray:
        """The next 30 s of features; past the recording's end zeros, as whisper was run."""
        window = job.request.mel[job.seek : job.seek + N_FRAMES].copy()
        window[max(0, job.request.content_frames - job.seek) :] = 0.0
        return window

    def _detect_languages(self, jobs: list[_Job]) -> None:
        """Whisper's language identification, for requests that gave none (multilingual)."""
        import mlx.core as mx

        vocab = self._vocab
        assert vocab is not None
        for job in jobs:
            if job.language is None and (job.request.language or not vocab.multilingual):
                job.language = job.request.language or "en"
        unknown = [job for job in jobs if job.language is None]
        if not unknown:
            return
        decoder = self._model.decoder
        state = DecoderState(_stacked_cross_kv(unknown), np.zeros(len(unknown), np.int64))
        logits = decoder.logits(decoder(mx.array([[vocab.sot]] * len(unknown)), state)[:, -1])
        codes = list(vocab.language_ids)
        ids = mx.array([vocab.language_ids[c] for c in codes])
        best = host_list(mx.argmax(logits[:, ids], axis=-1))
        for job, choice in zip(unknown, best, strict=True):
            job.language = codes[choice]

    @staticmethod
    def _schedule(job: _Job) -> tuple[float, ...]:
        """The temperatures a window may be decoded at, in order."""
        return temperatures(job.request.temperature)

    def _task(self, job: _Job) -> WindowTask:
        """The current window's next attempt."""
        vocab = self._vocab
        assert vocab is not None
        start = vocab.sot_sequence(job.language, job.request.task)
        context = job.context[-(self._model.dims.n_text_ctx // 2 - 1) :]
        prefix = [vocab.sot_prev, *context] if context else []
        seed = int(job.rng.integers(2**31))
        temperature = self._schedule(job)[len(job.attempts)]
        return WindowTask(prefix + start, len(prefix), temperature, seed)

    def _advance(self, job: _Job, result: WindowResult, features: Any) -> None:
        """Emit the window's segments (with word times when asked) and move the job on;
        `features`: this window's encoder output, (1, ctx, state)."""
        vocab = self._vocab
        assert vocab is not None
        request = job.request
        window_frames = min(N_FRAMES, request.content_frames - job.seek)
        window_start = job.seek / FRAMES_PER_SECOND
        duration = request.content_frames / FRAMES_PER_SECOND
        silent = is_silence(result)
        if silent or not result.tokens:
            job.seek += window_frames
        else:
            pieces, advance = split_segments(
                result.tokens, vocab.timestamp_begin, window_start, window_frames
            )
            for piece in pieces:
                text = vocab.decode(piece.tokens)
                start, end = tighten(
                    max(piece.start, job.last_end), min(piece.end, duration), job.loud
                )
                if not text.strip() or end <= start:
                    continue
                words: tuple[tuple[str, float, float], ...] = ()
                if request.word_timestamps:
                    words = self._words(job, piece.tokens, features, window_start, start, end)
                job.last_end = end
                job.stream.push(
                    Segment(
                        id=job.segments,
                        seek=job.seek,
                        start=round(start, 3),
                        end=round(end, 3),
                        text=text,
                        tokens=piece.tokens,
                        temperature=result.temperature,
                        avg_logprob=result.avg_logprob,
                        compression_ratio=result.compression_ratio,
                        no_speech_prob=result.no_speech_prob,
                        words=words,
                    )
                )
                job.segments += 1
            job.seek += max(advance, 1)
            # Context is what whisper saw in training: the previous text with its timestamps.
            job.context.extend(t for piece in pieces for t in piece.tokens)
            if result.temperature > PROMPT_RESET_TEMPERATURE:
                job.context.clear()
        if job.seek >= request.content_frames:
            self._jobs.remove(job)
            language = job.language or "en"
            self._finish(job, TranscriptionDone(LANGUAGES.get(language, language), duration))

    def _words(
        self,
        job: _Job,
        tokens: list[int],
        features: Any,
        window_start: float,
        segment_start: float,
        segment_end: float,
    ) -> tuple[tuple[str, float, float], ...]:
        """Word times of one segment, tightened onto loud frames and kept inside the segment."""
        vocab = self._vocab
        assert vocab is not None
        text_tokens = [t for t in tokens if t < vocab.eot]
        content = min(N_FRAMES, job.request.content_frames - job.seek)
        words = align_words(
            self._model,
            vocab,
            features,
            vocab.sot_sequence(job.language, job.request.task),
            text_tokens,
            content,
            self._alignment_heads,
            window_start,
        )
        out = []
        previous_end = segment_start
        for word in words:
            start = min(max(word.start, previous_end), segment_end)
            end = min(max(word.end, start), segment_end)
            start, end = tighten(start, end, job.loud)
            out.append((word.word, round(start, 3), round(end, 3)))
            previous_end = end
        return tuple(out)

    def _finish(self, job: _Job, event: ErrorEvent | TranscriptionDone) -> None:
        self.finish_request()  # first, so a reader woken by the event sees the count already down
        job.stream.push(event)


def _stacked_cross_kv(jobs: list[_Job]) -> list[tuple[Any, Any]]:
    """The encoded windows' cross-attention keys and values, one row per job, per layer."""
    import mlx.core as mx

    return [
        (
            mx.concatenate([job.cross_kv[layer][0] for job in jobs]),
            mx.concatenate([job.cross_kv[layer][1] for job in jobs]),
        )
        for layer in range(len(jobs[0].cross_kv))
    ]


def initial_context(vocab: WhisperVocab, prompt: str | None) -> list[int]:
    """The request's `prompt` as decoder context for its first window."""
    return vocab.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
