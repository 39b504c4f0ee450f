"""`mlxd pull`, `mlxd import hf … --quantize`, `mlxd rm` and the local half of `mlxd models list`.

Importing this module imports neither MLX nor huggingface_hub (the CLI's start-up stays fast).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from server import validation_messages

# huggingface_hub and httpx log a line per request at INFO, and huggingface_hub a warning per
# in-process retry; mlxd's own progress and errors say what matters.
_CHATTY_LOGGERS = {"httpx": logging.WARNING, "httpx2": logging.WARNING, "huggingface_hub": 40}


def add_hub_commands(commands: Any) -> None:
    pull = commands.add_parser(
        "pull", help="fetch a model from the Hugging Face hub (resumes an interrupted pull)"
    )
    pull.add_argument("ref", help="ORG/NAME[@REVISION] or, for a GGUF repo, ORG/NAME:QUANT")
    add_quantize_options(pull)
    pull.add_argument("--name", help="store name of the quantized copy (default: NAME-4bit)")
    remove = commands.add_parser("rm", help="delete a model (store name or hub repo id)")
    remove.add_argument("name")


def add_quantize_options(parser: Any) -> None:
    """`--quantize BITS [--group-size N]`, for `mlxd pull` and `mlxd import hf`."""
    parser.add_argument(
        "--quantize",
        type=int,
        choices=[4, 8],
        metavar="BITS",
        help="quantize a float checkpoint with mlx-lm to 4 or 8 bits, into the store",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        choices=[32, 64, 128],
        help="weights per scale when quantizing (default: 32 at 4 bits, 64 at 8 bits)",
    )


def one_line(error: BaseException) -> str:
    """An error as one line (pydantic's multi-line reports become `field: message`)."""
    if isinstance(error, ValidationError):
        return validation_messages.one_line(error)
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
    _check_quantize_options(args)
    if args.quantize and ref.quant is not None:
        raise ValueError(f"{ref} is a GGUF quant, already quantized: leave out --quantize")
    hub, progress = HubConfig.from_env(), PullProgress(str(ref))
    store = ModelStore(settings.home)
    try:
        if ref.quant is None:
            path = pull(ref, hub, progress)
        else:
            path = pull_model(ref, hub, store, progress, _dequantize())
    except KeyboardInterrupt:
        progress.finish(interrupted=True)
        print(f"mlxd: pull of {ref} interrupted; run it again to resume", file=sys.stderr)
        return 130
    if args.quantize:
        return _quantize_into_store(store, path, ref.repo_id.rsplit("/", 1)[-1], args)
    print(f"{ref} ready: {path}")
    _note_if_too_large(str(ref), store.size_bytes(path))
    return 0


def _note_if_too_large(name: str, weights_bytes: int) -> None:
    """Say now, with the way out, when the pulled model could never load on this device."""
    from engines.device_memory import MIN_KV_BYTES, ModelTooLarge, check_fits, usable_memory

    usable, what = usable_memory()
    try:
        check_fits(name, weights_bytes, MIN_KV_BYTES, usable, what)
    except ModelTooLarge as exc:
        print(f"mlxd: note: {exc.message}", file=sys.stderr)


def import_hf_command(settings: Any, args: argparse.Namespace) -> int:
    """`mlxd import hf SOURCE --quantize BITS`: SOURCE is a checkpoint directory, a store name
    or a hub repo (its cached snapshot, else pulled first)."""
    from engines.errors import ModelNotFound
    from engines.weights.hub_files import RepoRef
    from engines.weights.store import ModelStore

    _check_quantize_options(args)
    if args.format != "hf":
        raise ValueError(
            "--quantize is for `mlxd import hf SOURCE` (a GGUF keeps its own quantization: "
            "--weights quantized)"
        )
    if not args.quantize or args.path is None:
        raise ValueError(
            "usage: mlxd import hf SOURCE --quantize 4|8 [--group-size N] [--name NAME] (a float "
            "checkpoint is served as it is: mlxd serve --model SOURCE)"
        )
    store, source = ModelStore(settings.home), str(args.path)
    try:
        name, path = store.resolve(source)
    except ModelNotFound:
        if RepoRef.parse(source) is None:
            raise
        args.ref = source
        return pull_command(settings, args)  # pulls, then quantizes: args.quantize is set
    ref = RepoRef.parse(name)
    return _quantize_into_store(store, path, ref.repo_id.rsplit("/", 1)[-1] if ref else name, args)


def _check_quantize_options(args: argparse.Namespace) -> None:
    if args.group_size and not args.quantize:
        raise ValueError("--group-size goes with --quantize 4|8")


def _quantize_into_store(store: Any, source: Any, base_name: str, args: argparse.Namespace) -> int:
    from engines.weights.quantize import default_group_size, quantize_checkpoint, quantized_name

    name = args.name or quantized_name(base_name, args.quantize)
    group_size = args.group_size or default_group_size(args.quantize)
    path = quantize_checkpoint(source, store.path_for(name), args.quantize, group_size)
    print(
        f"{name} ready: {path} ({args.quantize}-bit, group size {group_size}, "
        f"{_size(store.size_bytes(path))}); serve it with: mlxd serve --model {name}"
    )
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
