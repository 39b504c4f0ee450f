"""What a chat engine's scheduler is told (its limits and modes, checked against the model's
caches) and what it counts. Plain values; the counters outlive a scheduler (the engine's final
stats), so they live apart from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from engines.llm.caches import CacheProfile
from engines.llm.speculative import DEFAULT_DRAFT_TOKENS, PROMPT_LOOKUP

logger = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    """What a scheduler is told: its limits and modes."""

    max_batch: int
    kv_budget_bytes: int
    prefill_chunk: int
    prefill_bucket: int = 1  # > 1 only for plain KV caches (they trim the padding back)
    pipelined: bool = True  # launch step n+1 before reading step n
    # Speculating where launching overlaps (set by for_caches): steps that draft nothing may run
    # pipelined, DecodeBatch.coasting.
    coast: bool = False
    cpu_decode: bool = False  # build steps inside cpu_decode.decode_step
    fused_projections: bool = False  # the model's projections are fused: fuse a draft model's too
    # "prompt_lookup": rows draft from their own text; else a draft model's directory.
    speculative: str | None = None
    speculative_tokens: int = DEFAULT_DRAFT_TOKENS  # most tokens a row drafts per step

    def for_caches(self, profile: CacheProfile) -> SchedulerConfig:
        """The config with speculation off where the caches cannot drop rejected drafts, and
        not pipelined with it (drafts follow tokens the host has read), except, where the device
        pipelines, while no drafting pays (`coast`)."""
        if not self.speculative:
            return self
        draft_model = (Path(self.speculative) / "config.json").exists()
        if self.speculative != PROMPT_LOOKUP and not draft_model:
            raise ValueError(
                f"speculative must be {PROMPT_LOOKUP!r} or a draft model's directory, "
                f"got {self.speculative!r}"
            )
        if not profile.plain:
            logger.info(
                "speculative decoding off: caches %s cannot drop rejected drafts",
                sorted(set(profile.kinds)),
            )
            return replace(self, speculative=None)
        return replace(self, pipelined=False, coast=self.pipelined)


@dataclass
class Counters:
    """What the scheduler has done (read by the engine's stats; outlives the scheduler)."""

    tokens_generated: int = 0
    largest_batch: int = 0  # most rows decoded together so far
    prefilled_together: int = 0  # prompts prefilled in shared forward passes
    drafted_tokens: int = 0  # speculative decoding: drafts proposed
    accepted_drafts: int = 0  # drafts the model kept
    decode_row_steps: int = 0  # rows × decode passes
