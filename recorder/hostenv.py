"""Making this host able to run the eBPF capture: bcc importable, tracefs mounted.

``python -m recorder.hostenv link-bcc`` (run by `make`) makes Debian's bcc module importable
in the project's virtual environment. bcc is Debian's ``python3-bpfcc``: pure Python over
``libbcc.so``, so any CPython 3 can import it; PyPI's package named ``bcc`` is unrelated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
TRACEFS_MOUNTS = (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"))


def link_bcc() -> str | None:
    """Symlink Debian's bcc package into this interpreter's site-packages if needed.

    Returns a message for the user, or None when nothing had to be done.
    """
    target = Path(sysconfig.get_paths()["purelib"]) / "bcc"
    if target.exists():
        return None
    if not DEBIAN_BCC.is_dir():
        return (
            "bcc is not installed (apt-get install python3-bpfcc); scope-record will use /proc mode"
        )
    if target.is_symlink():  # a dangling link from an older install
        target.unlink()
    target.symlink_to(DEBIAN_BCC)
    return None


def ensure_tracefs() -> str | None:
    """Mount tracefs (and debugfs) if absent: bcc reads tracepoint formats from there.

    Must run before ``bcc`` is imported, which looks for tracefs at import time. Returns why
    it could not, or None.
    """
    if (
        Path("/sys/kernel/tracing/events").is_dir()
        or Path("/sys/kernel/debug/tracing/events").is_dir()
    ):
        return None
    if os.geteuid() != 0:
        return "tracefs is not mounted at /sys/kernel/tracing and mounting it needs root"
    for fstype, mountpoint in TRACEFS_MOUNTS:
        if not Path(mountpoint).is_dir():
            continue
        subprocess.run(
            ["mount", "-t", fstype, fstype, mountpoint],
            check=False,
            capture_output=True,
        )
    if Path("/sys/kernel/tracing/events").is_dir():
        return None
    return "could not mount tracefs at /sys/kernel/tracing"


def main(argv: list[str]) -> int:
    if argv[1:] == ["link-bcc"]:
        message = link_bcc()
        if message:
            print(f"hostenv: {message}", file=sys.stderr)
        return 0
    print("usage: python -m recorder.hostenv link-bcc", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
