"""``scope-record service``: the recorder as a systemd service.

The unit shipped in the package (``recorder/systemd/scope-recorder.service``) is completed
with the command line to run (this installation's ``scope-record``, the log, ``--pin`` and
the options given) and written to the unit directory; where systemd runs, it is enabled and
started too.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from eventlog.errors import ServiceError, UsageError

UNIT_NAME = "scope-recorder.service"
UNIT_DIRECTORY = Path("/etc/systemd/system")
# Always given: the programs pinned, and a line per minute for the journal.
SERVICE_ARGUMENTS = ("--pin", "--log-interval", "60")


def systemd_running() -> bool:
    """sd_booted(): systemd is the service manager of this boot."""
    return Path("/run/systemd/system").is_dir()


def scope_record_command() -> str:
    """This installation's scope-record, by absolute path (a unit finds no PATH)."""
    beside = Path(sys.executable).parent / "scope-record"  # a virtual environment's
    found = str(beside) if beside.is_file() else shutil.which("scope-record")
    if not found:
        raise UsageError("cannot find this installation's scope-record to run as a service")
    return str(Path(found).absolute())


def unit_text(exec_start: list[str]) -> str:
    template = (files("recorder") / "systemd" / UNIT_NAME).read_text()
    # systemd unquotes like a shell, and expands % and $: both are escaped.
    line = " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$") for a in exec_start)
    return template.replace("@EXEC_START@", line)


@dataclass(frozen=True)
class Installed:
    path: Path
    started: bool  # enabled and started by systemd (False where systemd does not run)


def install(record_arguments: list[str], unit_directory: Path = UNIT_DIRECTORY) -> Installed:
    path = unit_directory / UNIT_NAME
    text = unit_text([scope_record_command(), *SERVICE_ARGUMENTS, *record_arguments])
    try:
        unit_directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if not systemd_running():
        return Installed(path, False)
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", UNIT_NAME)
    return Installed(path, True)


def uninstall(unit_directory: Path = UNIT_DIRECTORY) -> Path | None:
    """Stop, disable and remove the unit; the path removed, or None if none was there."""
    path = unit_directory / UNIT_NAME
    if systemd_running() and path.exists():
        _systemctl("disable", "--now", UNIT_NAME)
    if not path.exists():
        return None
    path.unlink()
    if systemd_running():
        _systemctl("daemon-reload")
    return path


def active_state() -> str:
    """systemd's word for the unit (active, failed, ...), or why there is none."""
    if not systemd_running():
        return "systemd is not running on this host"
    result = subprocess.run(
        ["systemctl", "is-active", UNIT_NAME], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or result.stderr.strip()


def _systemctl(*arguments: str) -> None:
    result = subprocess.run(["systemctl", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise ServiceError(f"systemctl {' '.join(arguments)}: {message}")
