"""Settings: one pydantic-settings class, from MLXD_* environment variables and CLI flags.

Created once in `__main__` and passed explicitly (`create_app(settings)`); nothing reads the
environment elsewhere, except `engines.blas`, which must act before MLX is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.weights.embedded import SMOLLM2, WHISPER_TINY_EN
from engines.weights.packaged_embeddings import ALL_MINILM_L6_V2
from engines.weights.store import default_home


class Settings(BaseSettings):
    """Every field is documented in docs/configuration.md (env var = MLXD_ + upper-case name)."""

    model_config = SettingsConfigDict(env_prefix="MLXD_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    home: Path = Field(default_factory=default_home, description="mlxd's data directory.")
    model: str = Field(SMOLLM2.name, description="Chat model: a store name or an MLX directory.")
    config: Path | None = Field(
        None, description="Models file (TOML): the models to serve; see server/config.py."
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=64,
        description="Memory for loaded models; default 70% of what the device can use.",
    )
    speech_model: str = Field(
        WHISPER_TINY_EN.name,
        description="Speech-to-text model: a store name or a directory ('' serves none).",
    )
    max_audio_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest audio upload (413 above)."
    )
    max_audio_seconds: float = Field(
        2 * 3600, gt=0, description="Longest decoded recording accepted (400 above)."
    )
    asr_max_batch: int = Field(
        8, ge=1, le=256, description="Most 30 s windows (of different requests) decoded together."
    )
    embedding_model: str = Field(
        ALL_MINILM_L6_V2.name,
        description="Embedding model served besides the chat model: a store name or a "
        "directory ('' serves none).",
    )
    default_model: str | None = Field(
        None,
        description="A served model (name or alias) that answers requests naming a model that "
        "is not configured; unset: they get 404. Wins over the models file's default_model.",
    )
    embed_max_batch: int = Field(
        64, ge=1, le=4096, description="Most inputs (of any requests) embedded in one pass."
    )
    embed_batch_tokens: int = Field(
        16384, ge=512, description="Most padded tokens in one embedding pass."
    )
    api_key: str | None = Field(
        None,
        description="API key(s), comma-separated; when set, every route but /health, / and "
        "/status needs one.",
    )
    allowed_hosts: str = Field(
        "127.0.0.1,localhost,::1,[::1]",
        description="Host header names served (comma-separated; '*' for any); others get 403.",
    )
    cors_origins: str = Field(
        "", description="Browser origins allowed (comma-separated; '*' for any); default none."
    )
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="Request header limit (431).")
    max_connections: int = Field(
        512, ge=1, description="HTTP requests in progress at once (streams included) before 503."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Request body limit.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next piece of a request body (408 after)."
    )
    body_deadline_s: float = Field(
        300.0, gt=0, description="Longest time to receive a whole request body (408 after)."
    )
    max_stop_sequences: int = Field(4, ge=0, description="Most `stop` strings per request.")
    max_n: int = Field(16, ge=1, le=128, description="Most choices (`n`) per request.")
    max_messages: int = Field(4096, ge=1, description="Most chat messages per request.")
    # Claude Code's tools declared in full are 72 KiB; 128 tools of that size (434 KiB) compile
    # into a forced-call grammar in under a second.
    max_schema_bytes: int = Field(
        1024 * 1024, ge=256, description="Largest `tools` / `response_format` schema (as JSON)."
    )
    keepalive_interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between SSE keep-alives (a comment; Anthropic: a ping), on a wall "
        "clock, so they also flow while a long prompt prefills.",
    )
    prefill_chunk: int | None = Field(
        None,
        ge=16,
        description="Prompt tokens processed per engine step, across requests "
        "(default: 512 on CPU, 2048 on a GPU).",
    )
    stream_interval_ms: float = Field(
        0.0, ge=0, le=1000, description="Least time between two streamed chunks of a request."
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Most choices decoded together (default: sized to the device's KV budget).",
    )
    max_waiting: int | None = Field(
        None,
        ge=0,
        description="Requests queued for admission per engine before 429 (default: chat, twice "
        "the batch; other kinds 64).",
    )
    kv_budget_mb: int | None = Field(
        None,
        ge=1,
        description="KV cache budget; default: half the device memory − weights − the "
        "largest prefill pass.",
    )
    prefix_cache_mb: int = Field(1024, ge=0, description="Prefix cache size (0 turns it off).")
    prefix_disk_mb: int = Field(
        8192,
        ge=0,
        description="Prefix cache entries spilled to MLXD_HOME/prefix-cache, most MiB per model "
        "(0 turns it off): a long prompt seen before resumes after a restart or an eviction.",
    )
    watchdog_s: float = Field(
        120.0, gt=0, description="A busy engine whose loop is stuck this long is unhealthy."
    )
    warmup_rows: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="Synthetic requests a chat engine runs right after load, in the background, "
        "so the first users do not pay for kernel planning (default: 32 on a GPU, 0 on CPU).",
    )
    fuse_projections: bool | None = Field(
        None,
        description="Compute each layer's query/key/value projections as one matrix product and "
        "its gate/up projections as one (Llama/Mistral, Qwen2, Qwen3, Gemma 3 text models): fewer "
        "kernels per decode step on a GPU (default: on CUDA, where it was measured faster; true "
        "turns it on for Metal too; never on the CPU).",
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace period for work at shutdown.")
    distributed: Literal["ring", "jaccl", "nccl", "mpi"] | None = Field(
        None, description="Shard the chat model over an mx.distributed group with this backend."
    )
    hosts: str = Field(
        "", description="The group's hosts, rank 0 first: a comma list or an mlx.launch hostfile."
    )
    pipeline: bool = Field(
        False, description="Distributed: pipeline stages instead of tensor parallel."
    )
    distributed_grace_s: float = Field(
        10.0, gt=0, description="A distributed step longer than 2x the slowest seen + this fails."
    )
    distributed_restart_s: float = Field(
        5.0,
        ge=0,
        description="After a lost distributed group, rank 0 restarts this much later to re-form "
        "it (0: never; it answers 503 until restarted by hand).",
    )
    log_level: str = Field("info", description="Python logging level name.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text (control characters escaped) or JSON objects."
    )

    def api_keys(self) -> list[str]:
        return [key.strip() for key in (self.api_key or "").split(",") if key.strip()]

    def host_allowlist(self) -> list[str]:
        """The configured names, plus the bind address when it is a specific one."""
        hosts = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.append(self.host)
        return hosts

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
