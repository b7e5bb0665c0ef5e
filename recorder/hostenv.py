"""Making this host able to run the eBPF capture: bcc importable, tracefs mounted.

bcc is Debian's ``python3-bpfcc``: pure Python over ``libbcc.so``, so any CPython 3 can
import it; PyPI's package named ``bcc`` is unrelated. ``import_bcc`` imports it from
Debian's directory when the interpreter does not find it (an installed wheel in a virtual
environment); ``python -m recorder.hostenv link-bcc`` (run by `make`) links it into the
project's virtual environment, so that tools other than the recorder find it too.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
TRACEFS_MOUNTS = (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"))
# The C library this process already holds (its symbols: syscall, setns, ...), for calls
# Python does not wrap; not looked up by name (ctypes.util.find_library runs ldconfig).
LIBC = ctypes.CDLL(None, use_errno=True)


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


def import_bcc() -> bool:
    """Whether bcc can be imported: as this interpreter finds it, else Debian's package
    alone (not the rest of Debian's Python packages)."""
    try:
        importlib.import_module("bcc")
        return True
    except ImportError:
        pass
    init = DEBIAN_BCC / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "bcc", init, submodule_search_locations=[str(DEBIAN_BCC)]
    )
    if not init.is_file() or spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules["bcc"]
        return False
    return True


def bcc_installed() -> bool:
    """Whether bcc can be imported, without importing it (which maps LLVM into this
    process: only the loader's child does that)."""
    return importlib.util.find_spec("bcc") is not None or (DEBIAN_BCC / "__init__.py").is_file()


TRACEFS_DIRECTORIES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def tracefs_directory() -> Path:
    """Where tracefs is mounted (after ``ensure_tracefs``)."""
    for directory in TRACEFS_DIRECTORIES:
        if (directory / "events").is_dir():
            return directory
    return TRACEFS_DIRECTORIES[0]


def ensure_tracefs() -> str | None:
    """Mount tracefs (and debugfs) if absent: bcc reads tracepoint formats from there.

    Must run before ``bcc`` is imported, which looks for tracefs at import time. Returns why
    it could not, or None.
    """
    if any((directory / "events").is_dir() for directory in TRACEFS_DIRECTORIES):
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
