"""`mlxd service`: the launchd plist and systemd unit it writes and the commands it runs, as plans
(nothing is installed; there is no user bus here to drive systemd for real)."""

from __future__ import annotations

import dataclasses
import os
import plistlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.service import LABEL, VERBS, ServiceOptions, plan, render_unit, status_report


@pytest.fixture
def options(tmp_path: Path) -> ServiceOptions:
    return ServiceOptions(
        port=8123,
        model="smollm2-135m-instruct",
        mlxd_home=tmp_path / "mlxd home",
        home=tmp_path / "user",
        uid=501,
        user="ada",
    )


def test_launch_agent_plist(options: ServiceOptions) -> None:
    install = plan("install", options, platform="darwin")
    [(path, text)] = install.writes.items()
    assert path == options.home / "Library/LaunchAgents/com.mlxd.server.plist"
    agent = plistlib.loads(text.encode())
    assert agent["Label"] == LABEL
    assert agent["ProgramArguments"] == [
        sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "8123",
        "--model", "smollm2-135m-instruct",
    ]  # fmt: skip
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # restart on crash only
    assert agent["ThrottleInterval"] == 10 and agent["ProcessType"] == "Interactive"
    assert agent["EnvironmentVariables"]["MLXD_HOME"] == str(options.mlxd_home)
    logs = options.home / "Library/Logs/mlxd"
    assert agent["StandardErrorPath"] == f"{logs}/mlxd.err.log"
    assert "UserName" not in agent
    assert install.commands[-1] == ["launchctl", "bootstrap", "gui/501", str(path)]


def test_launchd_verbs(options: ServiceOptions) -> None:
    target = f"gui/501/{LABEL}"
    assert plan("uninstall", options, "darwin").commands == [["launchctl", "bootout", target]]
    assert plan("restart", options, "darwin").commands == [["launchctl", "kickstart", "-k", target]]
    assert plan("stop", options, "darwin").commands == [["launchctl", "kill", "SIGTERM", target]]
    assert plan("start", options, "darwin").commands == [["launchctl", "kickstart", target]]
    assert plan("logs", options, "darwin").follow is not None


def test_launch_daemon_with_system(options: ServiceOptions) -> None:
    system = ServiceOptions(**{**options.__dict__, "system": True})
    install = plan("install", system, "darwin")
    [(path, text)] = install.writes.items()
    assert path == Path("/Library/LaunchDaemons/com.mlxd.server.plist")
    assert plistlib.loads(text.encode())["UserName"] == "ada"
    assert install.commands[-1][:3] == ["launchctl", "bootstrap", "system"]


def test_systemd_user_unit(options: ServiceOptions) -> None:
    install = plan("install", options, platform="linux")
    [(path, text)] = install.writes.items()
    assert path == options.home / ".config/systemd/user/mlxd.service"
    assert f"ExecStart={sys.executable} -m server serve --host 127.0.0.1 --port 8123" in text
    assert f"Environment=MLXD_HOME='{options.mlxd_home}'" not in text  # not shell-quoted
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert "User=" not in text and "@" not in text  # every placeholder filled
    assert install.commands == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "mlxd.service"],
    ]
    assert plan("logs", options, "linux").follow == [
        "journalctl", "--user", "-u", "mlxd.service", "-n", "100", "-f",
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_accepts_the_unit(options: ServiceOptions, tmp_path: Path) -> None:
    unit = tmp_path / "mlxd.service"
    unit.write_text(render_unit(options))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line for line in result.stderr.splitlines() if "mlxd.service" in line and "Failed" in line
    ]
    assert not problems, result.stderr


def test_every_verb_has_a_plan_on_both_platforms(options: ServiceOptions) -> None:
    for platform in ("darwin", "linux"):
        for verb in VERBS:
            described = plan(verb, options, platform).describe()
            assert described.strip(), (platform, verb)


def test_dry_run_prints_and_touches_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "server", "service", "install", "--dry-run", "--port", "8123"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert "--port 8123" in result.stdout and "enable --now" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_status_report_without_a_server(options: ServiceOptions) -> None:
    with socket.socket() as probe:  # a port nothing listens on (8123 may be in use here)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    options = dataclasses.replace(options, port=free)
    report = status_report(options, "ActiveState=inactive\nMainPID=0\n")
    assert "service: inactive" in report and "pid" not in report
    assert f"url: http://127.0.0.1:{free}/v1" in report and "health: not answering" in report


def test_a_wheel_carries_the_service_templates(tmp_path: Path) -> None:
    """A non-editable install finds its templates as package data, not beside a checkout."""
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ into the tree
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("server", "engines", "launchd"):
        shutil.copytree(root / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("mlxd-*.whl")
    target = tmp_path / "site"
    shutil.unpack_archive(wheel, target, format="zip")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from server.service import TEMPLATES, LABEL, UNIT; "
        "print(TEMPLATES); print(len((TEMPLATES / f'{LABEL}.plist').read_bytes())); "
        "print(len((TEMPLATES / UNIT).read_text()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    where, plist_bytes, unit_chars = found.stdout.split()
    assert where.startswith(str(target))
    assert int(plist_bytes) > 0 and int(unit_chars) > 0
