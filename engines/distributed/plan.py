"""Step plans: what rank 0 decided for one engine step, delivered to every rank through the
group's own collectives (no transport of ours).

A plan carries the requests admitted to the scheduler this step (with concrete seeds), the uids
removed (cancelled by their clients), whether the engine stops, and rank 0's digest of every
token it has emitted so far. Rank 0 calls `PlanChannel.send`, the others `receive`; both issue
the same collectives in the same order, on the calling thread's stream (the engine thread's):
a fixed-size header (magic, sequence number, payload length, payload CRC-32, token digest), then,
only when the plan is not empty, its payload. A broadcast is an `all_sum` to which only rank 0
contributes (every backend has it; NCCL has no send/recv).

Invariants: sequence numbers count from 0 on every rank and must match; the payload's CRC must
match; a follower's own token digest must equal rank 0's (it decoded the tokens rank 0 sent);
rank 0 gets back exactly what it sent (the others add zeros). Any mismatch raises
`PlanMismatch`: the ranks have diverged, or a collective lost a peer and returned garbage, and
the group must not go on.
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from engines.types import GenerationRequest

MAGIC = 0x6D6C7864  # "mlxd"
_MASK31 = 0x7FFFFFFF  # header fields travel as int32


class PlanMismatch(RuntimeError):
    """A follower received a plan that does not continue what it has seen: ranks diverged."""


@dataclass
class StepPlan:
    """One step's decisions (applied in this order: inserts, removals, then the step)."""

    inserts: list[GenerationRequest] = field(default_factory=list)
    removals: list[int] = field(default_factory=list)
    stop: bool = False
    config: dict[str, Any] | None = None  # only in the first plan: the scheduler's settings

    @property
    def empty(self) -> bool:
        return not (self.inserts or self.removals or self.stop or self.config)


class TokenDigest:
    """A running CRC-32 of (uid, token) pairs in emission order: equal on ranks that agree."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, uid: int, tokens: list[int]) -> None:
        data = b"".join(t.to_bytes(4, "little", signed=True) for t in (uid, *tokens))
        self.value = zlib.crc32(data, self.value)


class PlanChannel:
    """Sends (rank 0) or receives (the others) one plan per step over `group`."""

    def __init__(self, group: Any, digest: TokenDigest) -> None:
        self.group = group
        self.digest = digest
        self.sequence = 0

    @property
    def leader(self) -> bool:
        return bool(self.group.rank() == 0)

    def send(self, plan: StepPlan) -> None:
        payload = b"" if plan.empty else pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
        header = [MAGIC, self.sequence, len(payload), zlib.crc32(payload) & _MASK31]
        header.append(self.digest.value & _MASK31)
        # The others add zeros: anything else back means a collective that lost a peer handed
        # back garbage instead of failing (MLX's ring can, with three or more ranks).
        if self._broadcast_header(header) != header:
            raise PlanMismatch(f"plan {self.sequence} came back altered: a peer was lost")
        if payload and self._broadcast_payload(payload, len(payload)) != payload:
            raise PlanMismatch(f"plan {self.sequence}'s payload came back altered")
        self.sequence += 1

    def receive(self) -> StepPlan:
        magic, sequence, length, crc, digest = self._broadcast_header(None)
        if magic != MAGIC or sequence != self.sequence:
            raise PlanMismatch(
                f"plan {sequence} (magic {magic:#x}) arrived where plan {self.sequence} was due"
            )
        if digest != self.digest.value & _MASK31:
            raise PlanMismatch(
                f"before plan {sequence}, rank 0 emitted other tokens than this rank"
            )
        self.sequence += 1
        if not length:
            return StepPlan()
        payload = self._broadcast_payload(None, length)
        if zlib.crc32(payload) & _MASK31 != crc:
            raise PlanMismatch(f"plan {sequence}: payload checksum mismatch")
        plan = pickle.loads(payload)  # from rank 0 of our own group, checked above
        assert isinstance(plan, StepPlan)
        return plan

    def _broadcast_header(self, values: list[int] | None) -> list[int]:
        mine = mx.array(values if values is not None else [0] * 5, dtype=mx.int32)
        total = mx.distributed.all_sum(mine, group=self.group)
        return [int(v) for v in np.array(total).tolist()]

    def _broadcast_payload(self, payload: bytes | None, length: int) -> bytes:
        if payload is not None:
            mine = mx.array(np.frombuffer(payload, dtype=np.uint8))
        else:
            mine = mx.zeros((length,), dtype=mx.uint8)
        total = mx.distributed.all_sum(mine, group=self.group)
        return np.array(total).tobytes()
