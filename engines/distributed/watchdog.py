"""How long a distributed step may take before the group counts as lost (a peer that stopped, or
died in the middle of a collective, leaves the others waiting for good: MLX's ring does not
always fail).

`StepClock` is written by the engine thread (steps and idle plans starting and ending) and read
by the watchdog thread (`overdue`); only floats and bools cross, each written in one assignment.

Limits:
- a step: 2 x the slowest step seen + the grace; until a first model step has finished, its pace
  is unknown and `FIRST_STEP_ALLOWANCE_S` more is allowed (a first prefill chunk of a large model
  over TCP can take many seconds); a follower also waits for the leader's next plan, up to one
  heartbeat;
- an idle plan (rank 0's heartbeat, 20 bytes): `BEAT_LIMIT_S`, or 4 x the slowest seen.
"""

from __future__ import annotations

import time

BEAT_LIMIT_S = 1.0
FIRST_STEP_ALLOWANCE_S = 60.0


class StepClock:
    def __init__(self, grace_s: float, heartbeat_s: float, leader: bool) -> None:
        self.grace_s = grace_s
        self.wait_for_plan_s = 0.0 if leader else heartbeat_s
        self.step_started: float | None = None
        self.beat_started: float | None = None
        self.slowest_step_s = 0.0
        self.slowest_beat_s = 0.0
        self.paced = False  # a model step has finished

    def start_step(self) -> None:
        self.step_started = time.monotonic()

    def end_step(self, ran_model: bool) -> None:
        if self.step_started is not None:
            self.slowest_step_s = max(self.slowest_step_s, time.monotonic() - self.step_started)
        self.paced = self.paced or ran_model
        self.step_started = None

    def start_beat(self) -> None:
        self.beat_started = time.monotonic()

    def end_beat(self) -> None:
        if self.beat_started is not None:
            self.slowest_beat_s = max(self.slowest_beat_s, time.monotonic() - self.beat_started)
        self.beat_started = None

    def step_limit_s(self) -> float:
        limit = 2 * self.slowest_step_s + self.grace_s + self.wait_for_plan_s
        return limit if self.paced else limit + FIRST_STEP_ALLOWANCE_S

    def beat_limit_s(self) -> float:
        return max(BEAT_LIMIT_S, 4 * self.slowest_beat_s)

    def overdue(self, now: float | None = None) -> str | None:
        """Why the group must count as lost now (None while every step is in time)."""
        now = time.monotonic() if now is None else now
        beat, step = self.beat_started, self.step_started
        if beat is not None and now - beat > self.beat_limit_s():
            return f"an idle plan got no answer for {self.beat_limit_s():.1f} s (a peer lost)"
        if step is not None and now - step > self.step_limit_s():
            return f"a step made no progress for {self.step_limit_s():.1f} s (a peer hung)"
        return None
