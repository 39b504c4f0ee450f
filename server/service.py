"""`mlxd service …`: run mlxd as a background service — launchd on macOS, systemd on Linux.

Every verb is first turned into a `ServicePlan` (files to write or remove, commands to run) by
pure functions of the platform and the options, so `--dry-run` prints exactly what would happen
and tests check the plans without touching the machine. Templates live in `launchd/`, shipped
as package data.

Invariants:
- The service runs `<this python> -m server serve …` with the options given at install time and
  `MLXD_HOME`, so it uses the same installation and model store as the shell that installed it.
- `stop` sends SIGTERM: mlxd drains and exits 0, and neither launchd (KeepAlive only on an
  unsuccessful exit) nor systemd (Restart=on-failure) restarts it; a crash is restarted.
- A lasting cluster is one service per host (`--distributed B --hosts H --rank R`): rank 0 runs
  `serve`, the others `follower`, each with the environment `mlx.launch` would give it (its
  rank, and the ring hostfile or JACCL device file, written under MLXD_HOME/cluster). A lost
  group makes every rank exit unsuccessfully, so each manager restarts its rank and the group
  forms again (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from engines.distributed.group import RING_PORT, cluster_environment, read_hosts

TEMPLATES = resources.files("launchd")
LABEL = "com.mlxd.server"
UNIT = "mlxd.service"
VERBS = ("install", "uninstall", "start", "stop", "restart", "status", "logs")


@dataclass(frozen=True)
class ClusterRank:
    """This host's place in a lasting cluster (mlxd service install --distributed …)."""

    backend: str
    hosts: str  # a comma list of IP addresses, or a hostfile's absolute path
    rank: int
    pipeline: bool = False
    port: int = RING_PORT  # the ring's first port, JACCL's coordinator (as mlx.launch's)

    def environment(self, mlxd_home: Path) -> tuple[dict[str, str], dict[Path, str]]:
        """The rank's variables (file variables pointing under MLXD_HOME/cluster) and the files
        to write there."""
        hosts = read_hosts(self.hosts)
        variables, files = cluster_environment(self.backend, hosts, self.rank, self.port)
        writes = {}
        for variable, text in files.items():
            path = mlxd_home / "cluster" / f"{variable.lower()}.json"
            variables[variable] = str(path)
            writes[path] = text + "\n"
        return variables, writes


@dataclass(frozen=True)
class ServiceOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    mlxd_home: Path = field(default_factory=lambda: Path("~/.cache/mlxd").expanduser())
    system: bool = False  # a LaunchDaemon / system unit instead of the user's agent / unit
    exit_timeout_s: int = 40
    python: str = sys.executable
    home: Path = field(default_factory=Path.home)
    uid: int = field(default_factory=lambda: os.getuid() if hasattr(os, "getuid") else 0)
    user: str = field(default_factory=lambda: os.environ.get("USER", "root"))
    cluster: ClusterRank | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def serve_arguments(self) -> list[str]:
        cluster = self.cluster
        if cluster is not None and cluster.rank > 0:
            if not self.model:
                raise ValueError("a follower's service needs --model (the same as rank 0's)")
            arguments = [self.python, "-m", "server", "follower", "--model", self.model]
            arguments += ["--distributed", cluster.backend]
            return arguments + (["--pipeline"] if cluster.pipeline else [])
        arguments = [self.python, "-m", "server", "serve", "--host", self.host]
        arguments += ["--port", str(self.port)]
        if self.model:
            arguments += ["--model", self.model]
        if cluster is not None:
            arguments += ["--distributed", cluster.backend, "--hosts", cluster.hosts]
            arguments += ["--pipeline"] if cluster.pipeline else []
        return arguments

    def environment(self) -> tuple[dict[str, str], dict[Path, str]]:
        """The service's variables (besides MLXD_HOME) and the files they name."""
        if self.cluster is None:
            return {}, {}
        return self.cluster.environment(self.mlxd_home)


@dataclass
class ServicePlan:
    writes: dict[Path, str] = field(default_factory=dict)
    removes: list[Path] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    follow: list[str] | None = None  # a command whose output is streamed (logs)

    def describe(self) -> str:
        lines = []
        for path, text in self.writes.items():
            lines += [f"# write {path}", text.rstrip(), ""]
        lines += [f"# remove {path}" for path in self.removes]
        lines += [shlex.join(command) for command in self.commands]
        if self.follow:
            lines.append(shlex.join(self.follow))
        return "\n".join(lines)


# -- macOS (launchd) ----------------------------------------------------------------------------


def plist_path(options: ServiceOptions) -> Path:
    if options.system:
        return Path("/Library/LaunchDaemons") / f"{LABEL}.plist"
    return options.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_dir(options: ServiceOptions) -> Path:
    """Where launchd writes the service's output (on Linux, journald keeps it)."""
    base = Path("/Library/Logs") if options.system else options.home / "Library" / "Logs"
    return base / "mlxd"


def render_plist(options: ServiceOptions) -> str:
    template = plistlib.loads((TEMPLATES / f"{LABEL}.plist").read_bytes())
    logs = str(log_dir(options))
    template["Label"] = LABEL
    template["ProgramArguments"] = options.serve_arguments()
    template["EnvironmentVariables"]["MLXD_HOME"] = str(options.mlxd_home)
    template["EnvironmentVariables"].update(options.environment()[0])
    template["WorkingDirectory"] = str(options.mlxd_home)
    template["ExitTimeOut"] = options.exit_timeout_s
    template["StandardOutPath"] = f"{logs}/mlxd.out.log"
    template["StandardErrorPath"] = f"{logs}/mlxd.err.log"
    if options.system:
        template["UserName"] = options.user
    return plistlib.dumps(template).decode()


def _domain(options: ServiceOptions) -> str:
    return "system" if options.system else f"gui/{options.uid}"


def launchd_plan(verb: str, options: ServiceOptions) -> ServicePlan:
    domain, path = _domain(options), plist_path(options)
    target = f"{domain}/{LABEL}"
    logs = log_dir(options)
    if verb == "install":
        return ServicePlan(
            writes={**options.environment()[1], path: render_plist(options)},
            commands=[["mkdir", "-p", str(logs)], ["launchctl", "bootstrap", domain, str(path)]],
        )
    if verb == "uninstall":
        return ServicePlan(removes=[path], commands=[["launchctl", "bootout", target]])
    if verb == "start":
        return ServicePlan(commands=[["launchctl", "kickstart", target]])
    if verb == "stop":
        return ServicePlan(commands=[["launchctl", "kill", "SIGTERM", target]])
    if verb == "restart":
        return ServicePlan(commands=[["launchctl", "kickstart", "-k", target]])
    if verb == "status":
        return ServicePlan(commands=[["launchctl", "print", target]])
    if verb == "logs":
        files = [str(logs / "mlxd.err.log"), str(logs / "mlxd.out.log")]
        return ServicePlan(follow=["tail", "-n", "100", "-F", *files])
    raise ValueError(verb)


# -- Linux (systemd) ----------------------------------------------------------------------------


def unit_path(options: ServiceOptions) -> Path:
    if options.system:
        return Path("/etc/systemd/system") / UNIT
    return options.home / ".config" / "systemd" / "user" / UNIT


def render_unit(options: ServiceOptions) -> str:
    text = (TEMPLATES / UNIT).read_text()
    replacements = {
        "@EXEC_START@": shlex.join(options.serve_arguments()),
        "@MLXD_HOME@": str(options.mlxd_home),
        "@ENVIRONMENT@": "".join(
            f'Environment="{name}={value}"\n' for name, value in options.environment()[0].items()
        ),
        "@EXIT_TIMEOUT@": str(options.exit_timeout_s),
        "@USER_LINE@": f"User={options.user}\n" if options.system else "",
        "@WANTED_BY@": "multi-user.target" if options.system else "default.target",
    }
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    return text


def systemd_plan(verb: str, options: ServiceOptions) -> ServicePlan:
    systemctl = ["systemctl"] if options.system else ["systemctl", "--user"]
    journal = ["journalctl"] if options.system else ["journalctl", "--user"]
    path = unit_path(options)
    if verb == "install":
        return ServicePlan(
            writes={**options.environment()[1], path: render_unit(options)},
            commands=[[*systemctl, "daemon-reload"], [*systemctl, "enable", "--now", UNIT]],
        )
    if verb == "uninstall":
        return ServicePlan(
            removes=[path],
            commands=[[*systemctl, "disable", "--now", UNIT], [*systemctl, "daemon-reload"]],
        )
    if verb in ("start", "stop", "restart"):
        return ServicePlan(commands=[[*systemctl, verb, UNIT]])
    if verb == "status":
        return ServicePlan(
            commands=[[*systemctl, "show", UNIT, "-p", "ActiveState", "-p", "MainPID"]]
        )
    if verb == "logs":
        return ServicePlan(follow=[*journal, "-u", UNIT, "-n", "100", "-f"])
    raise ValueError(verb)


def plan(verb: str, options: ServiceOptions, platform: str = sys.platform) -> ServicePlan:
    if platform == "darwin":
        return launchd_plan(verb, options)
    if platform.startswith("linux"):
        return systemd_plan(verb, options)
    raise RuntimeError(f"mlxd service supports macOS (launchd) and Linux (systemd), not {platform}")


# -- doing it -----------------------------------------------------------------------------------


def run(verb: str, options: ServiceOptions, dry_run: bool) -> int:
    service_plan = plan(verb, options)
    if dry_run:
        print(service_plan.describe())
        return 0
    for path, text in service_plan.writes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    status = 0
    outputs = []
    for command in service_plan.commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        outputs.append(result.stdout)
        if result.returncode != 0:
            status = result.returncode
            print(f"{shlex.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
    for path in service_plan.removes:
        path.unlink(missing_ok=True)
        print(f"removed {path}")
    if verb == "status":
        print(status_report(options, "\n".join(outputs)))
        return 0
    if service_plan.follow:
        return subprocess.call(service_plan.follow)
    return status


def status_report(options: ServiceOptions, manager_output: str) -> str:
    """Running or not, PID, URL, models served (from /health), and where the logs are."""
    pid = _field(manager_output, ("pid = ", "MainPID="))
    state = _field(manager_output, ("state = ", "ActiveState="))
    running = f" (pid {pid})" if pid not in ("", "0") else ""
    lines = [f"service: {state or 'not installed'}{running}", f"url: {options.url}/v1"]
    try:
        with urllib.request.urlopen(f"{options.url}/health", timeout=2) as response:
            health = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 while loading or draining: still a body
        health = json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        health = None
    if health is None:
        lines.append("health: not answering")
    else:
        models = ", ".join(health.get("models", []))
        lines.append(f"health: {health.get('status')}; models: {models}")
    if sys.platform == "darwin":
        lines.append(f"logs: {log_dir(options)}")
    else:
        lines.append(f"logs: journalctl {'' if options.system else '--user '}-u {UNIT}")
    return "\n".join(lines)


def _field(text: str, prefixes: tuple[str, ...]) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        for prefix in prefixes:
            if stripped.startswith(prefix):
                return stripped[len(prefix) :].strip()
    return ""
