"""DistributedLLMEngine: one model sharded over the ranks of an `mx.distributed` group.

Rank 0 (the leader) is a normal chat engine behind the HTTP server; the other ranks (followers,
`mlxd follower`) run the same engine thread with no HTTP. Every rank holds a replica of the same
`Scheduler`; only the leader decides. Before each step the leader sends the step's plan
(engines/distributed/plan.py: requests admitted, with concrete seeds; uids removed) and every
rank applies it to its scheduler and steps it. So every rank builds the same graphs in the same
order, and the model's collectives (tensor-parallel all-reduces, pipeline send/recv) pair up.
Only rank 0's sampled tokens count: every token drawn (each step's, and each prompt's first)
goes through `agree`, an `all_sum` to which only rank 0 contributes, and the followers' choices
(grammar state, penalties, stop strings, cache) advance with rank 0's tokens whatever their own
draw was. Rank 0 keeps its own tokens (made to depend on the collective, so it runs on every
rank), never what a broken collective might hand back; each plan still carries rank 0's digest
of the tokens emitted so far, and a follower that received other tokens stops the group at once.

Invariants:
- Every collective runs on the engine thread's stream (collectives from two streams corrupt
  each other's results), in the same order on every rank.
- The replicated scheduler never looks at the clock or at a client's cancel flag: arrivals and
  cancellations reach it only through plans (`ReplicatedScheduler`, `LeaderSink`).
- A lost group is final for the process (MLX cannot form a group again in it): a collective
  that fails (a peer died: fast) or a step that outlives the watchdog's limit (a peer is
  stopped: it would hang forever) fails every request in flight with `GroupLost`, makes new ones
  fail with 503 + Retry-After and `/health` report `stalled` with the reason; local followers are
  killed. After `restart_s` of answering 503 (so clients and health checks see why), rank 0
  restarts to re-form the group: it re-executes itself when it started its followers, else it
  exits with status 3 for its launcher or service manager to restart every rank.
- While idle, the leader sends an empty plan every `heartbeat_s` and fails the group when one
  goes unanswered (engines/distributed/watchdog.py: a peer lost mid-collective can leave MLX's
  ring waiting for good), so a peer lost between requests is noticed within 2 s, and followers
  notice a lost leader; the leader also watches the followers it started itself and fails the
  group the moment one exits.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlx.core as mx

from engines.bridge import RequestStream
from engines.distributed.group import (
    LocalFollowers,
    launched_rank,
    restart_process,
    spawn_local_followers,
)
from engines.distributed.plan import PlanChannel, StepPlan, TokenDigest
from engines.distributed.sinks import FollowerSink, LeaderSink
from engines.distributed.watchdog import StepClock
from engines.errors import EngineFailed, EngineUnavailable
from engines.llm.engine import LLMEngine
from engines.llm.prefix_cache import PrefixCache
from engines.llm.sampling import TokenSampler
from engines.llm.scheduler import Scheduler
from engines.llm.scheduler_config import SchedulerConfig
from engines.types import ChatLimits, EngineStats, ErrorEvent, GenerationRequest

logger = logging.getLogger(__name__)

_BEAT = object()  # inbox message: send an (empty) plan now


class GroupLost(EngineUnavailable):
    """The distributed group lost a peer; the server must restart to form it again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class DistributedOptions:
    backend: str  # ring | jaccl | nccl | mpi
    hosts: tuple[str, ...] = ()  # one address per rank (rank 0 first); () under mlx.launch
    pipeline: bool = False  # pipeline stages instead of tensor parallel
    step_grace_s: float = 10.0  # watchdog: a step may last 2 x the slowest seen + this
    heartbeat_s: float = 0.25  # idle: an empty plan this often
    restart_s: float = 5.0  # after a loss, rank 0 restarts this much later (0: never)


class ReplicatedScheduler(Scheduler):
    """A Scheduler that admits at once: the leader decides when arrivals join (its plans),
    so no rank waits on its own clock for a burst to complete."""

    def _arrivals_pending_s(self) -> float:
        return 0.0


def replicable(limits: ChatLimits) -> ChatLimits:
    """`limits` with what would make the ranks' schedulers differ turned off: the disk tier of
    the prefix cache (each rank's own disk, filled and evicted by its own shard's sizes: a hit
    on one rank and a miss on another run different graphs) and the kernel warm-up (rows that
    skip the plans). Options a follower cannot learn before it loads (quantized KV, speculative
    decoding) are refused in one line."""
    for field, value in (("kv_bits", limits.kv_bits), ("speculative", limits.speculative)):
        if value:
            raise ValueError(f"{field} is not supported with --distributed (got {value!r})")
    return replace(limits, prefix_disk_dir=None, prefix_disk_bytes=0, warmup_rows=0)


class DistributedLLMEngine(LLMEngine):
    """A chat engine whose model is sharded over a group; rank 0 serves, the others follow."""

    scheduler_class = ReplicatedScheduler

    def __init__(
        self,
        name: str,
        path: Path,
        options: DistributedOptions,
        prefill_chunk: int | None = None,
        limits: ChatLimits | None = None,
    ) -> None:
        if options.pipeline and options.backend == "nccl":
            raise ValueError("NCCL has no send/recv: serve tensor parallel (without --pipeline)")
        super().__init__(name, path, prefill_chunk, replicable(limits or ChatLimits()))
        self.options = options
        self.fault: str | None = None
        self.rank = launched_rank() or 0
        self.digest = TokenDigest()
        self.channel: PlanChannel | None = None
        self.followers = LocalFollowers()
        self._outgoing: list[tuple[Any, RequestStream]] = []  # leader: not yet in a plan
        self._sinks: dict[int, LeaderSink] = {}  # leader: in the scheduler, by uid
        self._removing: set[int] = set()
        self._lock = threading.Lock()  # _sinks and fault: the watchdog reads them
        self._beat_due = False
        self._stop_sent = False
        self._shutting_down = False  # stop() was called: followers exit, nothing restarts
        self.clock = StepClock(options.step_grace_s, options.heartbeat_s, self.leader)
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog-{name}", daemon=True)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # -- event loop side ---------------------------------------------------------------------

    def submit(self, request: Any) -> RequestStream:
        if self.fault is not None:
            raise self._lost()
        return super().submit(request)

    def stats(self) -> EngineStats:
        stats = super().stats()
        if self.fault is None:
            return stats
        return replace(stats, stalled=True, fault=self._fault_message())

    def stop(self, timeout: float | None = 30.0) -> None:
        self._shutting_down = True
        # An engine thread stuck in a collective of a lost group never returns: do not wait.
        super().stop(1.0 if self.fault is not None else timeout)
        self.followers.stop()

    # -- loading -----------------------------------------------------------------------------

    def load_checkpoint(self) -> tuple[Any, Any, dict[str, Any]]:
        from engines.distributed.shard import place
        from engines.weights.checkpoint import load_checkpoint

        options = self.options
        if self.leader and launched_rank() is None and len(options.hosts) > 1:
            self.followers = spawn_local_followers(
                options.backend, list(options.hosts), self._follower_command()
            )
        expected = len(options.hosts) if launched_rank() is None else None
        group = mx.distributed.init(backend=options.backend, strict=(expected or 2) > 1)
        if expected is not None and group.size() != expected:
            raise ValueError(
                f"the {options.backend} group has {group.size()} ranks, not {expected}"
            )
        # float32 entries are dequantized (lazily) before mlx-lm shards their Linear layers
        model, tokenizer, config = load_checkpoint(self.path, lazy=True, return_config=True)
        place(model, group, options.pipeline)
        mx.eval(model.parameters())  # only this rank's shard is read from disk
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))  # every rank has loaded
        self.channel = PlanChannel(group, self.digest)
        logger.info(
            "rank %d of %d (%s, %s) loaded its shard of %s",
            group.rank(),
            group.size(),
            options.backend,
            "pipeline" if options.pipeline else "tensor parallel",
            self.path,
        )
        return model, tokenizer, config

    def _follower_command(self) -> list[str]:
        command = [sys.executable, "-m", "server", "follower", "--model", str(self.path)]
        command += ["--distributed", self.options.backend]
        return command + (["--pipeline"] if self.options.pipeline else [])

    def _new_sampler(self, request: GenerationRequest) -> TokenSampler:
        sampler = super()._new_sampler(request)
        sampler.agree = self._agree  # its forks (n > 1) share it
        return sampler

    def _agree(self, tokens: mx.array) -> mx.array:
        """`tokens` just sampled -> rank 0's, on every rank: one collective, issued in the same
        order everywhere (the samplers and the batch run in the same order on every rank)."""
        assert self.channel is not None
        group = self.channel.group
        mine = tokens.astype(mx.int32)
        if self.leader:
            summed = mx.distributed.all_sum(mine, group=group)
            return mx.depends(tokens, summed)
        # Zeros that depend on this rank's draw: the step's model collectives (which the draw
        # depends on) run before this one, in the same order as on rank 0.
        zeros = mx.depends(mx.zeros_like(mine), mine)
        return mx.distributed.all_sum(zeros, group=group).astype(tokens.dtype)

    def load(self) -> None:
        super().load()
        assert self.channel is not None and self.scheduler is not None
        self.scheduler.batch.agree = self._agree
        # The first plan carries the leader's scheduler settings: every replica must admit,
        # chunk and evict exactly alike.
        if self.leader:
            self.channel.send(StepPlan(config=self._scheduler_settings()))
        else:
            self._configure(self.channel.receive().config or {})
        self._watchdog.start()

    def _scheduler_settings(self) -> dict[str, Any]:
        assert self.scheduler is not None
        config = vars(self.scheduler.config).copy()
        cache = self.scheduler.prefix_cache
        config["prefix_cache_bytes"] = cache.max_bytes if cache is not None else 0
        return config

    def _configure(self, settings: dict[str, Any]) -> None:
        assert self.scheduler is not None
        settings = dict(settings)
        cache_bytes = settings.pop("prefix_cache_bytes")
        if settings["cpu_decode"] != self.scheduler.config.cpu_decode:
            raise ValueError("ranks differ in device kind (CPU decode rewrites on one only)")
        self.scheduler.config = SchedulerConfig(**settings)
        self.scheduler.prefix_cache = PrefixCache(cache_bytes) if cache_bytes else None
        self.max_batch = settings["max_batch"]

    # -- engine thread -----------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        if message is _BEAT:
            self._beat_due = True
            return
        request, stream = message
        if self.fault is not None:
            self.release(-request.n, -1)
            stream.push(ErrorEvent(self._lost()))
            return
        if request.sampling.seed is None:  # every rank must draw the same numbers
            seed = secrets.randbits(63)
            request = replace(request, sampling=replace(request.sampling, seed=seed))
        self._outgoing.append((request, stream))

    def has_work(self) -> bool:
        if self.fault is not None or self.scheduler is None:
            return False
        if not self.leader:
            return not self._stopping
        last_plan_due = self._stopping and not self._stop_sent  # it tells followers to exit
        return bool(self._outgoing or self._beat_due or self.scheduler.has_work() or last_plan_due)

    def step(self) -> None:
        assert self.scheduler is not None and self.channel is not None
        self.clock.start_step()
        ran_model = False
        try:
            if self.leader:
                plan = self._next_plan()
                if plan.empty and not self.scheduler.has_work():
                    self._send_heartbeat(plan)
                else:
                    self.channel.send(plan)
                self._stop_sent = plan.stop
            else:
                plan = self.channel.receive()
                self._stopping = self._stopping or plan.stop
            self._apply(plan)
            if self.scheduler.has_work():
                self.scheduler.step()
                ran_model = True
        finally:
            self.clock.end_step(ran_model)

    def _send_heartbeat(self, plan: StepPlan) -> None:
        """An idle plan, timed on its own: a peer lost in the middle of a collective can leave
        MLX's ring waiting for good, and an idle plan of 20 bytes has no reason to be slow."""
        assert self.channel is not None
        self.clock.start_beat()
        try:
            self.channel.send(plan)
        finally:
            self.clock.end_beat()

    def _next_plan(self) -> StepPlan:
        with self._lock:
            for uid, sink in self._sinks.items():
                if sink.stream.cancelled and uid not in self._removing:
                    self._removing.add(uid)
        plan = StepPlan(
            inserts=[request for request, _ in self._outgoing],
            removals=sorted(self._removing),
            stop=self._stopping and not self._outgoing and not self.scheduler_busy(),
        )
        self._removing.clear()
        self._beat_due = False
        return plan

    def scheduler_busy(self) -> bool:
        return self.scheduler is not None and self.scheduler.has_work()

    def _apply(self, plan: StepPlan) -> None:
        """Every rank: the plan's requests join the scheduler (same uids everywhere), then its
        removals leave at this step."""
        assert self.scheduler is not None
        streams = [stream for _, stream in self._outgoing] if self.leader else []
        self._outgoing = []
        for index, request in enumerate(plan.inserts):
            if self.leader:
                sink = LeaderSink(streams[index], request.n, self.digest)
                sink.uid = self.scheduler.insert(request, sink)
                with self._lock:
                    self._sinks[sink.uid] = sink
            else:
                follower_sink = FollowerSink(self.digest)
                follower_sink.uid = self.scheduler.insert(request, follower_sink)
        for uid in plan.removals:
            self.scheduler.remove(uid)
        with self._lock:
            for uid in [uid for uid, sink in self._sinks.items() if sink.open_choices <= 0]:
                del self._sinks[uid]

    def release(self, choices: int, queued: int = 0) -> None:
        if self.fault is None:  # a lost group zeroed the counts once and for all
            super().release(choices, queued)

    def fail_all(self, error: Exception) -> None:
        if isinstance(error, EngineFailed):
            # A step raised: a collective failed (a peer died) or the ranks diverged.
            self.lose_group(f"{type(error).__name__}: {error}")
        super().fail_all(self._lost() if self.fault else error)

    def unload(self) -> None:
        super().unload()
        # After the last plan (stop) the followers exit by themselves; kill any that do not.
        self.followers.stop()

    def wait_finished(self) -> bool:
        """Block until the engine thread ends; True when it ended well (stopped by the plan)."""
        self._thread.join()
        if self._load_error is not None:
            logger.error("rank %d failed to load: %s", self.rank, self._load_error)
        return self._load_error is None and self.fault is None

    # -- faults ------------------------------------------------------------------------------

    def lose_group(self, reason: str) -> None:
        """Mark the group lost (once; from the engine thread or the watchdog): every request in
        flight gets a GroupLost error, new ones are refused, local followers are killed (which
        also frees an engine thread stuck in a collective with a stopped peer)."""
        with self._lock:
            if self.fault is not None:
                return
            self.fault = reason
            sinks = list(self._sinks.values())
            self._sinks.clear()
            outgoing, self._outgoing = self._outgoing, []
        self.failures += 1
        self._stopping = self._stopping or not self.leader
        with self._counts_lock:
            self._active = self._queued = 0
        logger.error(
            "engine %s (rank %d): distributed group lost: %s", self.name, self.rank, reason
        )
        error = self._lost()
        for stream in [sink.stream for sink in sinks] + [stream for _, stream in outgoing]:
            stream.push(ErrorEvent(error))
        self.followers.stop(timeout_s=0.5)
        if not self.leader:
            # A follower without its leader has nothing to serve; its engine thread may be stuck
            # in a collective that never returns.
            logger.error("follower exits")
            os._exit(3)
        if self.options.restart_s > 0 and not self._shutting_down:
            timer = threading.Timer(self.options.restart_s, self._restart)
            timer.daemon = True
            timer.start()

    def _restart(self) -> None:
        """Re-form the group the only way MLX allows: a new process (see group.restart_process).
        Not a graceful stop: the engine thread may be stuck in a collective that never returns."""
        if self._shutting_down:  # the server is stopping: a restart is not wanted
            return
        logger.error(
            "engine %s: restarting to re-form the distributed group (%s)", self.name, self.fault
        )
        restart_process(self.followers)

    def _heartbeat_due(self) -> bool:
        """The leader is idle (no step running) and has sent no plan for `heartbeat_s`."""
        idle_s = time.monotonic() - self.last_progress
        return (
            self.leader
            and self.clock.step_started is None
            and not self._beat_due
            and (idle_s >= self.options.heartbeat_s)
        )

    def _fault_message(self) -> str:
        restart = self.options.restart_s
        when = f"in {restart:g} s" if restart > 0 else "when mlxd is restarted"
        return (
            f"model '{self.name}' lost a peer of its distributed group ({self.fault}); "
            f"the server restarts to re-form the group {when}"
        )

    def _lost(self) -> GroupLost:
        """The error for requests while the group is lost: retry once it may be back (the
        restart, then a load of about as long as the first)."""
        restart = self.options.restart_s
        return GroupLost(self._fault_message(), int(restart + 30) if restart > 0 else 60)

    def _watch(self) -> None:
        """The step watchdog (and, on the leader, the idle heartbeat)."""
        while self.fault is None and not self._stopped.is_set():
            time.sleep(min(0.1, self.options.heartbeat_s / 2))
            stopping = self._shutting_down or self._stop_sent  # followers exit when told to
            lost = None if stopping else self.followers.first_exited()
            lost = lost or self.clock.overdue()
            if lost is not None:
                self.lose_group(lost)
            elif self._heartbeat_due():
                self.post(_BEAT)


def build_distributed(
    name: str, path: Path, limits: ChatLimits, settings: Mapping[str, Any]
) -> DistributedLLMEngine:
    """The served chat model of `mlxd serve --distributed B --hosts H [--pipeline]`."""
    from engines.distributed.group import parse_hosts

    hosts = tuple(parse_hosts(settings["hosts"])) if settings.get("hosts") else ()
    options = DistributedOptions(
        backend=settings["distributed"],
        hosts=hosts,
        pipeline=bool(settings.get("pipeline")),
        step_grace_s=float(settings.get("distributed_grace_s") or 10.0),
        restart_s=float(settings.get("distributed_restart_s", 5.0)),
    )
    return DistributedLLMEngine(name, path, options, settings.get("prefill_chunk"), limits)


def run_follower(path: Path, options: DistributedOptions) -> int:
    """`mlxd follower`: serve this rank's shard until the leader says stop (0) or the group is
    lost (the process exits with 3 from the fault handler)."""
    engine = DistributedLLMEngine(f"follower-{launched_rank()}", path, options)
    if engine.leader:
        raise ValueError("a follower needs MLX_RANK > 0 (rank 0 is `mlxd serve`)")
    engine.start()
    return 0 if engine.wait_finished() else 1
