"""Real Podman containers for tests: a local image, a private API service, containers.

Nothing is pulled: the image is busybox-static's binary imported with ``podman import``. On a
hybrid cgroup host crun refuses to run, so containers run under Debian's runc, with limits
within the host's. Every name is the test's own (prefixed with its process id), and
``remove`` uses ``--ignore`` (``podman rm -f a b`` keeps ``a`` when ``b`` does not exist).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.capabilities import is_root, require

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "httpd", "wget", "cat", "echo", "mkdir")
RUN_OPTIONS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
PREFIX = f"scope-t{os.getpid()}"


def require_podman() -> None:
    found = all(shutil.which(tool) for tool in ("podman", "runc")) and BUSYBOX.exists()
    require(is_root() and found, "root, podman, runc and busybox-static (make host-test)")


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def build_image(workdir: Path, *names: str) -> None:
    """An image holding busybox and its applets, imported as each of ``names``."""
    archive = workdir / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    podman("import", str(archive), names[0])
    for name in names[1:]:
        podman("tag", names[0], name)


def remove_images(*names: str) -> None:
    podman("rmi", "-f", "--ignore", *names, check=False)


def run(name: str, image: str, *command: str, labels: dict[str, str] | None = None) -> str:
    """Start a detached container; its id."""
    label_args = [arg for k, v in (labels or {}).items() for arg in ("--label", f"{k}={v}")]
    return podman("run", "-d", "--name", name, *RUN_OPTIONS, *label_args, image, *command)


def inspect(name: str, template: str) -> str:
    return podman("inspect", "-f", template, name)


def remove(*names: str) -> None:
    podman("rm", "-f", "-t", "0", "--ignore", *names, check=False)


@contextmanager
def api_service(socket_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``podman system service`` on ``socket_path`` while the block runs."""
    service = start_service(socket_path)
    try:
        yield service
    finally:
        stop_service(service)


def start_service(socket_path: Path) -> subprocess.Popen[bytes]:
    socket_path.unlink(missing_ok=True)
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise AssertionError("podman system service did not start")
        time.sleep(0.05)
    return service


def stop_service(service: subprocess.Popen[bytes]) -> None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
