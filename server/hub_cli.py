"""`mlxd pull`, `mlxd rm` and the local half of `mlxd models list`.

Importing this module imports neither MLX nor huggingface_hub (the CLI's start-up stays fast).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

# huggingface_hub and httpx log a line per request at INFO, and huggingface_hub a warning per
# in-process retry; mlxd's own progress and errors say what matters.
_CHATTY_LOGGERS = {"httpx": logging.WARNING, "httpx2": logging.WARNING, "huggingface_hub": 40}


def add_hub_commands(commands: Any) -> None:
    pull = commands.add_parser(
        "pull", help="fetch a model from the Hugging Face hub (resumes an interrupted pull)"
    )
    pull.add_argument("ref", help="ORG/NAME[@REVISION] or, for a GGUF repo, ORG/NAME:QUANT")
    remove = commands.add_parser("rm", help="delete a model (store name or hub repo id)")
    remove.add_argument("name")


def one_line(error: BaseException) -> str:
    """An error as one line (pydantic's multi-line reports become `field: message`)."""
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def quiet_hub_loggers() -> None:
    for name, level in _CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def pull_command(settings: Any, args: argparse.Namespace) -> int:
    from huggingface_hub.utils import disable_progress_bars

    from engines.weights.hub import pull, pull_model
    from engines.weights.hub_cache import HubConfig
    from engines.weights.hub_files import RepoRef
    from engines.weights.hub_progress import PullProgress
    from engines.weights.store import ModelStore

    ref = RepoRef.parse(args.ref)
    if ref is None:
        raise ValueError(f"{args.ref!r} is not a repo id: ORG/NAME[@REVISION][:QUANT]")
    quiet_hub_loggers()
    disable_progress_bars()  # ours: one bar for the whole pull
    hub, progress = HubConfig.from_env(), PullProgress(str(ref))
    if ref.quant is None:
        path = pull(ref, hub, progress)
    else:
        path = pull_model(ref, hub, ModelStore(settings.home), progress, _dequantize())
    print(f"{ref} ready: {path}")
    return 0


def _dequantize() -> bool:
    """As `mlxd import gguf --weights auto`: float32 on CPU, quantized on Metal/CUDA."""
    import mlx.core as mx

    return bool(mx.default_device() == mx.cpu)


def rm_command(settings: Any, args: argparse.Namespace) -> int:
    from engines.weights.hub_cache import hub_cache_dir, remove_repo
    from engines.weights.hub_files import RepoRef
    from engines.weights.store import ModelStore, gguf_store_name

    store = ModelStore(settings.home)
    ref = RepoRef.parse(args.name)
    if ref is not None and ref.quant is not None:
        freed, where = store.remove(gguf_store_name(ref)), "store"
    elif ref is not None:
        freed, where = remove_repo(hub_cache_dir(), ref.repo_id), "Hugging Face cache"
    else:
        freed, where = store.remove(args.name), "store"
    if not freed:
        print(f"mlxd: {args.name!r} is not in the {where}", file=sys.stderr)
        return 1
    print(f"removed {args.name} from the {where} ({_size(freed)} freed)")
    return 0


def print_local_models(store: Any) -> None:
    """The store's models and the Hugging Face cache's model repos, with their sizes."""
    from engines.weights.hub_cache import cached_repos, hub_cache_dir

    sizes = store.sizes()
    print(f"store {store.models_dir}:" + ("" if sizes else " empty"))
    for name, size in sizes.items():
        print(f"  {name}  {_size(size)}")
    cache = hub_cache_dir()
    repos = cached_repos(cache)
    print(f"hugging face cache {cache}:" + ("" if repos else " empty"))
    for repo in repos:
        state = "" if repo.complete else "  (incomplete: mlxd pull to finish)"
        print(f"  {repo.repo_id}  {_size(repo.size_bytes)}{state}")


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
