"""`mlxd doctor`: what mlxd runs on, and a fix for each problem found.

Each check returns a `Finding` (a line of facts, and, for a problem, the command or setting that
fixes it); `mlxd doctor` prints them and exits 1 when any problem was found.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from dataclasses import dataclass

from engines import blas
from engines.weights.embedded import SMOLLM2, WHISPER_TINY_EN
from engines.weights.store import ModelStore, default_home
from server.runtime import runtime
from server.service import LABEL, UNIT, ServiceOptions, plist_path, unit_path
from server.settings import Settings


@dataclass(frozen=True)
class Finding:
    topic: str
    facts: str
    fix: str | None = None  # None: nothing wrong


def check_runtime() -> list[Finding]:
    info = runtime()
    python = f"Python {platform.python_version()}, {platform.platform()}"
    findings = [
        Finding("mlxd", f"{info.version}; {python}"),
        Finding("mlx", f"{info.mlx_version}, backend {info.backend}, device {info.device}"),
    ]
    memory = f"{info.memory_bytes / 2**30:.1f} GiB physical"
    if info.backend == "metal":
        import mlx.core as mx

        wired = mx.device_info().get("max_recommended_working_set_size", 0)
        memory += f"; Metal working set {int(wired) / 2**30:.1f} GiB recommended"
    findings.append(Finding("memory", memory))
    return findings


def check_blas(status: blas.BlasStatus) -> Finding:
    if not sys.platform.startswith("linux"):
        return Finding("blas", "macOS: MLX uses Accelerate / Metal")
    if status.library:
        return Finding("blas", f"{status.library} ({status.detail})")
    return Finding(
        "blas",
        f"MLX's bundled reference BLAS ({status.detail}): CPU prefill ~17x slower",
        "sudo apt-get install libopenblas0-pthread  (Fedora: dnf install openblas; "
        "then MLXD_BLAS_PATH=/path/to/libopenblas.so if it is not found)",
    )


def check_native_softmax(backend: str) -> Finding:
    """The CPU engines' softmax kernel (engines/llm/native_softmax.py): built, or why not."""
    if backend != "cpu":
        return Finding("native softmax", f"not used: MLX runs on {backend}")
    from engines.llm import native_softmax

    kernel, detail = native_softmax.kernel_status()
    if kernel is not None or native_softmax.unsupported_cpu():
        return Finding("native softmax", detail)
    if detail == native_softmax.NO_COMPILER:
        fix = "install a C compiler (apt-get install gcc) or set CC"
    else:  # a compiler, but the build or the load failed
        fix = f"make {default_home() / 'native'} writable, or set CC to a working C compiler"
    return Finding("native softmax", f"off: {detail}; CPU attention ~10x slower", fix)


def check_store(settings: Settings) -> list[Finding]:
    store = ModelStore(settings.home)
    names = store.names()
    findings = [Finding("model store", f"{store.models_dir}: {', '.join(names) or 'empty'}")]
    for wanted, what in ((settings.model, "chat"), (settings.speech_model, "speech")):
        if not wanted:
            continue
        try:
            store.resolve(wanted)
        except Exception:
            embedded = wanted in (SMOLLM2.name, WHISPER_TINY_EN.name)
            fix = "mlxd import --embedded" if embedded else f"mlxd import … --name {wanted}"
            findings.append(Finding(f"{what} model", f"{wanted!r} is not in the store", fix))
        else:
            findings.append(Finding(f"{what} model", wanted))
    return findings


def check_limits(settings: Settings) -> list[Finding]:
    """The batch width and queue the chat model would get, and why (sized to this device's KV
    budget unless set: engines/llm/limits.py), estimated from its config.json and weights."""
    import json

    import mlx.core as mx

    from engines.llm.engine import default_kv_budget, default_prefill_chunk
    from engines.llm.limits import PassShape, kv_bytes_per_token, prefill_peak_bytes, size_limits
    from engines.weights.checkpoint import dequantize_on_load

    store = ModelStore(settings.home)
    try:
        _, path = store.resolve(settings.model)
        config = json.loads((path / "config.json").read_text())
    except Exception:  # a missing model is check_store's finding
        return []
    if dequantize_on_load(path):  # runs in float32, so its KV cache is float32 too
        config = {**config, "torch_dtype": "float32"}
        if isinstance(config.get("text_config"), dict):
            config["text_config"] = {**config["text_config"], "torch_dtype": "float32"}
    weights = store.size_bytes(path)
    on_cpu = mx.default_device() == mx.cpu
    chunk = settings.prefill_chunk or default_prefill_chunk(on_cpu)
    # As the engine reserves it (every logit of a joint prefill: plain caches, the common case).
    reserve = prefill_peak_bytes(PassShape.of(config), chunk, chunk, not on_cpu, True)
    budget = (settings.kv_budget_mb or 0) * 2**20 or default_kv_budget(weights, reserve)
    per_token = kv_bytes_per_token(config)
    sized = size_limits(
        budget, lambda tokens: tokens * per_token, settings.max_batch, settings.max_waiting
    )
    facts = f"{settings.model}: max_batch {sized.max_batch}, max_waiting {sized.max_waiting}"
    return [Finding("chat limits", f"{facts} ({sized.reason})")]


def check_hub(timeout_s: float = 3.0) -> list[Finding]:
    """The Hugging Face cache (where, how big, how many models) and whether the hub answers
    (`HF_ENDPOINT`; skipped with `HF_HUB_OFFLINE`). An unreachable hub is a fact, not a
    problem: models already in the cache serve offline."""
    import urllib.error
    import urllib.request

    from engines.weights.hub_cache import HubConfig, cached_repos

    hub = HubConfig.from_env()
    repos = cached_repos(hub.cache_dir)
    size = sum(repo.size_bytes for repo in repos) / 2**30
    cache = f"{hub.cache_dir}: {len(repos)} model repo(s), {size:.2f} GiB"
    if hub.offline:
        return [Finding("hf cache", cache), Finding("hf hub", "offline (HF_HUB_OFFLINE is set)")]
    probe = urllib.request.Request(f"{hub.endpoint}/api/models?limit=1", method="GET")
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as response:
            reach = f"{hub.endpoint} reachable (HTTP {response.status})"
    except urllib.error.HTTPError as error:
        reach = f"{hub.endpoint} reachable (HTTP {error.code})"
    except (OSError, ValueError) as error:
        reach = f"{hub.endpoint} unreachable ({error}); models in the cache still serve"
    token = "HF_TOKEN set" if hub.token else "no HF_TOKEN (gated models need one)"
    return [Finding("hf cache", cache), Finding("hf hub", f"{reach}; {token}")]


def check_port(settings: Settings) -> Finding:
    with socket.socket() as probe:
        probe.settimeout(1)
        busy = (
            probe.connect_ex(
                (settings.host if settings.host != "0.0.0.0" else "127.0.0.1", settings.port)
            )
            == 0
        )
    if not busy:
        return Finding("port", f"{settings.host}:{settings.port} is free")
    return Finding(
        "port",
        f"{settings.host}:{settings.port} is in use (by mlxd's service, or another program)",
        f"mlxd service status; or serve elsewhere: mlxd serve --port {settings.port + 1}",
    )


def check_service() -> Finding:
    options = ServiceOptions()
    if sys.platform == "darwin":
        installed = plist_path(options).exists()
        command = ["launchctl", "print", f"gui/{options.uid}/{LABEL}"]
    else:
        installed = unit_path(options).exists()
        command = ["systemctl", "--user", "is-active", UNIT]
    if not installed:
        return Finding("service", "not installed (optional: mlxd service install)")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("service", f"installed; state unknown ({exc})")
    if result.returncode == 0:
        return Finding("service", "installed and loaded")
    return Finding("service", "installed but not running", "mlxd service start; mlxd service logs")


def run_doctor(settings: Settings, blas_status: blas.BlasStatus) -> int:
    findings = [
        *check_runtime(),
        check_blas(blas_status),
        check_native_softmax(runtime().backend),
        *check_store(settings),
        *check_limits(settings),
        *check_hub(),
        check_port(settings),
        check_service(),
    ]
    for finding in findings:
        print(f"{finding.topic}: {finding.facts}")
        if finding.fix:
            print(f"  fix: {finding.fix}")
    problems = [f for f in findings if f.fix]
    print(f"{len(problems)} problem(s) found" if problems else "no problems found")
    return 1 if problems else 0
