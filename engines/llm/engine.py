"""LLMEngine: serves one mlx-lm model from its engine thread, continuously batched.

Three parts: `ChatFront` (front.py: tokenizer, templates, fit checks, grammar compile; the event
loop's side, no MLX), `Scheduler` (scheduler.py: the batching itself, synchronous, with a uid
API), and this thin shell, the engine thread: it loads the model, asks its caches what they can do
(`CacheProfile`), builds the scheduler, hands it each arrival and calls its `step`.

Invariants: all MLX work happens on the engine thread; only plain values reach RequestStreams;
a model that fails to load raises in `load` (the pool reports it; nothing else stops).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from engines.bridge import RequestStream
from engines.llm.caches import CacheProfile
from engines.llm.chat_formats import hidden_special_ids, model_formats
from engines.llm.cpu_decode import install as install_cpu_decode
from engines.llm.detokenize import TokenBytes
from engines.llm.disk_cache import DiskPrefixCache, model_identity
from engines.llm.disk_worker import DiskWorker
from engines.llm.front import ChatFront
from engines.llm.fused_projections import fusion_pays
from engines.llm.fused_projections import install as install_fused_projections
from engines.llm.limits import PassShape, prefill_peak_bytes, size_limits
from engines.llm.prefix_cache import PrefixCache
from engines.llm.quantized_cache import install as install_quantized_kv
from engines.llm.sampling import TokenSampler, choice_seed
from engines.llm.scheduler import Scheduler
from engines.llm.scheduler_config import Counters, SchedulerConfig
from engines.llm.sequence import Vocabulary
from engines.llm.speculative import DEFAULT_DRAFT_TOKENS
from engines.llm.warmup import WarmUp, default_rows
from engines.types import (
    FIM_TOKEN_SETS,
    ChatLimits,
    ChatModelInfo,
    EngineStats,
    GenerationRequest,
)
from engines.worker import EngineThread

logger = logging.getLogger(__name__)


class LLMEngine(EngineThread, ChatFront):
    """One model, one thread. `submit` and the properties are called from the event loop."""

    kind = "chat"
    scheduler_class = Scheduler  # a distributed engine replays plans on its own subclass

    def __init__(
        self,
        name: str,
        path: Path,
        prefill_chunk: int | None = None,
        limits: ChatLimits | None = None,
        prefill_bucket: int | None = None,
    ) -> None:
        EngineThread.__init__(self, name)
        ChatFront.__init__(self, name, limits or ChatLimits())
        self.path = path
        self.prefill_chunk = prefill_chunk or 0  # 0: chosen for the device at load
        self.prefill_bucket = prefill_bucket or 0  # 0: chosen for the device at load
        self.scheduler: Scheduler | None = None
        self.warmup = WarmUp(name, 0)  # replaced at load
        self.fused_layers = 0  # layers whose projections were fused at load
        self.counters = Counters()  # kept across unload (final stats)

    # -- event loop side ---------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; its events arrive on the returned stream (on the calling loop).
        Raises before anything is queued (see `ChatFront.admit`)."""
        self.admit(request)
        stream = RequestStream(request.request_id, choices=request.n)
        self.post((request, stream))
        return stream

    def stats(self) -> EngineStats:
        cache = self.prefix_cache
        disk = cache.disk if cache else None
        return EngineStats(
            active=self._active,
            queued=self._queued,
            largest_batch=self.counters.largest_batch,
            tokens_generated=self.counters.tokens_generated,
            drafted_tokens=self.counters.drafted_tokens,
            accepted_drafts=self.counters.accepted_drafts,
            decode_row_steps=self.counters.decode_row_steps,
            prefix_cache_hits=cache.hits if cache else 0,
            prefix_cache_misses=cache.misses if cache else 0,
            prefix_cache_entries=len(cache) if cache else 0,
            prefix_cache_bytes=cache.nbytes if cache else 0,
            stalled=self.stalled(self._active > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
            max_batch=self.max_batch,
            max_waiting=self.max_waiting,
            limits_reason=self.limits_reason,
            kv_bits=self.limits.kv_bits,
            fused_layers=self.fused_layers,
            prefix_disk_hits=disk.hits if disk else 0,
            prefix_disk_entries=len(disk) if disk else 0,
            prefix_disk_bytes=disk.nbytes if disk else 0,
        )

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.scheduler.prefix_cache if self.scheduler else None

    @prefix_cache.setter
    def prefix_cache(self, cache: PrefixCache | None) -> None:
        """Replace the prefix cache (tests and benchmarks, while the engine is idle)."""
        assert self.scheduler is not None
        self.scheduler.prefix_cache = cache

    @property
    def largest_batch(self) -> int:
        """Most rows decoded together so far (tests reset it to 0)."""
        return self.counters.largest_batch

    @largest_batch.setter
    def largest_batch(self, rows: int) -> None:
        self.counters.largest_batch = rows

    @property
    def prefilled_together(self) -> int:
        return self.counters.prefilled_together

    @property
    def tokens_generated(self) -> int:
        return self.counters.tokens_generated

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        model, tokenizer, config = self.load_checkpoint()
        self._read_tokenizer(tokenizer, config)
        if self.limits.kv_bits:
            install_quantized_kv(model, self.limits.kv_bits, self.limits.kv_group_size)
        # Warm up (compile kernels, allocate buffers) and measure what the caches hold.
        probe = make_prompt_cache(model)
        # Long enough for state caches that keep the last few token ids (longcat_flash_ngram).
        mx.eval(model(mx.array([list(range(16))]), cache=probe))
        profile = self.profile = CacheProfile.of(probe, model)
        if not profile.batchable:
            self.max_batch = 1
            logger.info(
                "engine %s: %s; serving one sequence at a time",
                self.name,
                profile.sequential_reason,
            )
        self.measure_weights(model)
        on_cpu = mx.default_device() == mx.cpu
        if not self.prefill_chunk:
            self.prefill_chunk = default_prefill_chunk(on_cpu)
        # The default budget leaves room for the largest prefill pass next to the caches: its
        # activations, and the logits of every position when fresh prompts share a pass.
        reserve = prefill_peak_bytes(
            PassShape.of(config), self.prefill_chunk, self.prefill_chunk, not on_cpu, profile.plain
        )
        self.kv_budget_bytes = self.limits.kv_budget_bytes or default_kv_budget(
            self.weights_bytes, reserve
        )
        self._size_limits(profile)
        self.scheduler = self._new_scheduler(model, tokenizer, profile)
        rows = default_rows() if self.limits.warmup_rows is None else self.limits.warmup_rows
        self.warmup = WarmUp(self.name, min(rows, self.max_batch))
        assert self.info is not None
        self.warmup.start(self.scheduler, self.release, self.vocab_size, self.info.eos_token_ids)
        logger.info(
            "engine %s loaded %s (context %d, caches %s, %d KiB KV per token, budget %d MiB)",
            self.name,
            self.path,
            self.info.context_length if self.info else 0,
            "/".join(sorted(set(profile.kinds))),
            profile.per_token // 1024,
            self.kv_budget_bytes // 2**20,
        )

    def _size_limits(self, profile: CacheProfile) -> None:
        """The batch width and queue in force: explicit ones, else sized to the KV budget."""
        sized = size_limits(
            self.kv_budget_bytes, profile.row_bytes, self.limits.max_batch, self.limits.max_waiting
        )
        self.max_waiting, self.limits_reason = sized.max_waiting, sized.reason
        if profile.batchable:
            self.max_batch = sized.max_batch
        logger.info(
            "engine %s: max_batch %d, max_waiting %d (%s)",
            self.name,
            self.max_batch,
            self.max_waiting,
            sized.reason,
        )

    def load_checkpoint(self) -> tuple[Any, Any, dict[str, Any]]:
        """The model, tokenizer and config (a distributed engine loads its shard instead), its
        projections fused where kernels launch one by one (engines/llm/fused_projections.py)."""
        model, tokenizer, config = _load_checkpoint(self.path)
        if fusion_pays(self.limits.fuse_projections):
            self.fused_layers = install_fused_projections(model)
            logger.info("engine %s: projections fused in %d layers", self.name, self.fused_layers)
        return model, tokenizer, config

    def _read_tokenizer(self, tokenizer: Any, config: dict[str, Any]) -> None:
        """Set the front's tokenizer facts (before any request can be accepted)."""
        self.tokenizer = tokenizer
        self.vocab_size = int(config.get("vocab_size") or len(tokenizer.vocab))
        context = int(
            config.get("max_position_embeddings")
            or getattr(tokenizer, "model_max_length", 0)
            or 4096
        )
        if self.limits.context_length:
            context = min(context, self.limits.context_length)
        if self.limits.chat_template:
            tokenizer.chat_template = self.limits.chat_template
        vocab = tokenizer.vocab
        tool_format, think = model_formats(
            tokenizer, bool(self.limits.chat_template), self.limits.tool_format
        )
        fim = next((s for s in FIM_TOKEN_SETS if all(t in vocab for t in s)), None)
        self.info = ChatModelInfo(
            name=self.name,
            path=str(self.path),
            context_length=context,
            eos_token_ids=frozenset(int(t) for t in tokenizer.eos_token_ids),
            created=int(self.path.stat().st_mtime),
            fim_tokens=fim,
            reasoning=think is not None or tool_format == "harmony",
            think_tags=think or ChatModelInfo.think_tags,
            tool_format=tool_format,
            untagged_tool_calls=self.limits.untagged_tool_calls,
        )

    def _new_scheduler(self, model: Any, tokenizer: Any, profile: CacheProfile) -> Scheduler:
        import mlx.core as mx

        assert self.info is not None
        on_cpu = mx.default_device() == mx.cpu
        if not self.prefill_bucket:
            self.prefill_bucket = default_prefill_bucket()
        config = SchedulerConfig(
            max_batch=self.max_batch,
            kv_budget_bytes=self.kv_budget_bytes,
            prefill_chunk=self.prefill_chunk,
            # Padding is trimmed back after a pass: only caches that trim exactly are padded.
            prefill_bucket=self.prefill_bucket if profile.plain else 1,
            # MLX's CPU backend computes a launched step before `async_eval` returns, so
            # launching step n+1 before reading step n only delays every token by a step
            # (docs/benchmarks.md); GPUs overlap the two.
            pipelined=not on_cpu,
            # cpu_decode's rewrites assume plain KV caches filled in lockstep.
            cpu_decode=on_cpu and profile.plain and install_cpu_decode(model),
            fused_projections=self.fused_layers > 0,
            speculative=self.limits.speculative,
            speculative_tokens=self.limits.speculative_tokens or DEFAULT_DRAFT_TOKENS,
        )
        # The engine thread detokenizes with its own copy: a Rust tokenizer used by two threads
        # at once can panic ("Already borrowed"); the front's stays on the event loop.
        own = copy.deepcopy(tokenizer)
        info = self.info
        hidden = hidden_special_ids(
            own, info.tool_format, info.think_tags if info.reasoning else None
        )
        vocabulary = Vocabulary(own, TokenBytes(own), info.eos_token_ids, hidden)
        prefix_cache = None
        if self.limits.prefix_cache_bytes > 0:
            prefix_cache = PrefixCache(self.limits.prefix_cache_bytes, disk=self._disk_cache())
        return self.scheduler_class(
            model,
            vocabulary,
            profile,
            config,
            self._new_sampler,
            self.release,
            prefix_cache,
            self.counters,
        )

    def _disk_cache(self) -> DiskPrefixCache | None:
        """Where prefix cache entries spill, per model identity (None: memory only)."""
        limits = self.limits
        if not limits.prefix_disk_dir or limits.prefix_disk_bytes <= 0:
            return None
        options = f"kv_bits={limits.kv_bits},group={limits.kv_group_size}"
        identity = model_identity(self.path, options)
        directory = Path(limits.prefix_disk_dir)
        return DiskPrefixCache(directory, identity, limits.prefix_disk_bytes, DiskWorker())

    def _new_sampler(self, request: GenerationRequest) -> TokenSampler:
        """The first choice's sampler (its grammar compiled here, on the engine thread)."""
        constraint = None
        if request.grammar is not None:
            constraint = self.grammar_compiler().constraint(request.grammar)
        return TokenSampler(
            request.sampling,
            choice_seed(request.sampling.seed, 0),
            self.vocab_size,
            request.prompt_tokens,
            request.logprobs,
            constraint,
        )

    def unload(self) -> None:
        if self.scheduler is not None and self.scheduler.prefix_cache is not None:
            self.scheduler.prefix_cache.close()  # spilled to disk, if it has one
        self.scheduler = None

    def handle(self, message: Any) -> None:
        assert self.scheduler is not None
        request, stream = message
        self.scheduler.insert(request, stream)

    def has_work(self) -> bool:
        return self.scheduler is not None and self.scheduler.has_work()

    def fail_all(self, error: Exception) -> None:
        if self.scheduler is not None:
            self.scheduler.fail_all(error)

    def step(self) -> None:
        assert self.scheduler is not None
        if self._stopping:
            self.warmup.abandon()
        wait_s = self.scheduler.step()
        self.warmup.poll(self.scheduler)
        if wait_s:  # idle, gathering a burst of arrivals
            self._stopping = self.wait_for_message(wait_s) or self._stopping


def _load_checkpoint(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """mlx-lm's model, tokenizer and config for `path`, or ValueError in one line naming what
    does not fit (an unknown model_type, weights that do not match the config)."""
    import json

    from engines.weights.checkpoint import load_checkpoint

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} has no readable config.json: {exc}") from exc
    try:
        return load_checkpoint(path, return_config=True)
    except ValueError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not supported" in detail:
            raise ValueError(
                f"model_type {model_type!r} is not a model family mlx-lm can build"
            ) from exc
        raise ValueError(f"the checkpoint does not match its config.json: {detail}") from exc


def default_prefill_bucket() -> int:
    """Query-length multiple prefill passes are padded to on this device. MLX's CUDA backend
    plans kernels per shape on first use, several per forward pass, so a prompt length never
    seen before is slower to its first token than a repeated one (docs/benchmarks.md, prefix
    reuse on the H200: bench/shape_costs.py, bench/ttft_shapes.py). Padded to a multiple of 32,
    new lengths reuse earlier plans. On Metal and CPU a new shape costs nothing and padding would
    only add compute."""
    import mlx.core as mx

    return 32 if mx.default_device() == mx.gpu and mx.cuda.is_available() else 1


def default_prefill_chunk(on_cpu: bool) -> int:
    """Prompt tokens per step. Bounds how long one step's prefill delays running streams: a CPU
    takes about a second for a few hundred tokens, a GPU milliseconds for thousands
    (docs/benchmarks.md, "Prefill stall")."""
    return 512 if on_cpu else 2048


def default_kv_budget(weight_bytes: int, reserve_bytes: int = 0) -> int:
    """Half of the memory MLX may use on this device, minus the weights and `reserve_bytes` (the
    transient of a prefill pass: limits.prefill_peak_bytes), at least 256 MiB."""
    import os

    import mlx.core as mx

    info = mx.device_info()
    device_memory = int(
        info.get("max_recommended_working_set_size") or info.get("memory_size") or 0
    )
    if not device_memory:  # MLX's CPU backend reports no memory: use physical RAM
        device_memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(device_memory // 2 - weight_bytes - reserve_bytes, 256 * 2**20)
