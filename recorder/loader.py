"""Compile and load the capture programs in a short-lived child process.

bcc compiles with LLVM and clang, which stay mapped in any process that imported them (about
85 MB resident, plus what the compile left on the heap). The recorder runs for months, so the
compile happens in a child: ``python -m recorder.loader`` compiles and loads the programs and
hands the recorder an fd on each program and on the maps it reads over a unix socket
(SCM_RIGHTS), then exits. The recorder attaches the programs as links, holds them (or pins
them) and never imports bcc.

The request (argv) is JSON: the compiler flags. The reply is one message: a JSON header naming
the fds that come with it in order, or saying why loading failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bpf
from eventlog.errors import CaptureError, EbpfUnavailableError
from recorder.hostenv import ensure_tracefs, import_bcc

# The programs, as bcc names the functions its macros define, and where each is attached.
TRACEPOINTS = (
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
)
# sock:inet_sock_set_state, attached raw: see bpf/tcp_events.c.
RAW_TRACEPOINTS = ("inet_sock_set_state", "sched_process_fork")
FLUSH_PROGRAM = "flush_stage"  # not attached: run on each CPU by the recorder
MAPS = ("events", "stats", "control", "netns_wanted")  # what user space reads and writes

MAX_REPLY_BYTES = 1 << 16


def tracepoint_function(tracepoint: str) -> str:
    return "tracepoint__" + tracepoint.replace(":", "__")


def raw_tracepoint_function(tracepoint: str) -> str:
    return "raw_tracepoint__" + tracepoint


@dataclass
class LoadedPrograms:
    """Open fds on the loaded programs, their links and the maps user space uses, by name:
    ``link:<tracepoint>``, ``prog:<function>``, ``map:<name>``."""

    fds: dict[str, int]

    def fd(self, name: str) -> int:
        return self.fds[name]

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}


# -- in the recorder ----------------------------------------------------------------------
def load_in_child(cflags: list[str], timeout_s: float = 120.0) -> LoadedPrograms:
    """Run the loader in a child process and receive what it loaded."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "recorder.loader", json.dumps(cflags), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()
        ours.settimeout(timeout_s)
        try:
            message, fds, _flags, _address = socket.recv_fds(ours, MAX_REPLY_BYTES, 64)
        except TimeoutError as exc:
            child.kill()
            raise CaptureError(f"loading the capture programs took over {timeout_s:.0f} s") from exc
        finally:
            _stderr = child.communicate(timeout=timeout_s)[1]
    return _received(message, fds, _stderr.decode(errors="replace"))


def _received(message: bytes, fds: list[int], stderr: str) -> LoadedPrograms:
    if not message:
        for fd in fds:
            os.close(fd)
        last = stderr.strip().splitlines()[-1:] or ["it exited without a word"]
        raise CaptureError(f"the capture programs did not load: {last[0]}")
    header = json.loads(message)
    if "error" in header:
        for fd in fds:
            os.close(fd)
        error = EbpfUnavailableError if header.get("unavailable") else CaptureError
        raise error(header["error"])
    return LoadedPrograms(dict(zip(header["names"], fds, strict=True)))


# -- in the child -------------------------------------------------------------------------
def load(cflags: list[str]) -> LoadedPrograms:
    """Compile and load the programs in this process (the child's work), with ``cflags`` and
    the running kernel's struct offsets; the recorder attaches them."""
    from recorder.capture import kernel_cflags  # noqa: PLC0415 (capture imports this module)

    problem = ensure_tracefs()
    if problem:
        raise EbpfUnavailableError(problem)
    cflags = kernel_cflags() + cflags
    if not import_bcc():
        raise EbpfUnavailableError("bcc is not installed (apt-get install python3-bpfcc)")
    # bcc reads tracefs's location at import: import it only after ensure_tracefs().
    from bcc import BPF  # noqa: PLC0415

    class Unattached(BPF):  # type: ignore[misc]
        """bcc attaches functions named like tracepoints as it loads them; the recorder
        attaches these as links instead, which can be pinned and outlive the process."""

        def _trace_autoload(self) -> None:
            pass

    try:
        with _quiet_stderr():
            module = Unattached(text=bpf.program_text().encode(), cflags=cflags)
    except Exception as exc:
        raise CaptureError(f"the capture programs did not load: {exc}") from exc
    fds: dict[str, int] = {}
    try:
        _take_fds(module, BPF, fds)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return LoadedPrograms(fds)


def _take_fds(module: Any, bpf_class: Any, fds: dict[str, int]) -> None:
    """Own fds on the maps user space uses and on every program, loaded, not attached."""
    for name in MAPS:
        fds[f"map:{name}"] = os.dup(module[name.encode()].map_fd)
    functions = [FLUSH_PROGRAM] + [tracepoint_function(tp) for tp in TRACEPOINTS]
    kinds = [bpf_class.RAW_TRACEPOINT] + [bpf_class.TRACEPOINT] * len(TRACEPOINTS)
    functions += [raw_tracepoint_function(tp) for tp in RAW_TRACEPOINTS]
    kinds += [bpf_class.RAW_TRACEPOINT] * len(RAW_TRACEPOINTS)
    for function, kind in zip(functions, kinds, strict=True):
        fds[f"prog:{function}"] = os.dup(module.load_func(function.encode(), kind).fd)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """bcc's compiler prints warnings about the kernel headers on fd 2; keep them out of the
    user's terminal unless the compile fails (then the exception says so)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m recorder.loader CFLAGS_JSON SOCKET_FD", file=sys.stderr)
        return 2
    with socket.socket(fileno=int(argv[2])) as reply:
        try:
            loaded = load(json.loads(argv[1]))
        except CaptureError as exc:
            unavailable = isinstance(exc, EbpfUnavailableError)
            reply.send(json.dumps({"error": str(exc), "unavailable": unavailable}).encode())
            return 1
        header = json.dumps({"names": list(loaded.fds)}).encode()
        socket.send_fds(reply, [header], list(loaded.fds.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
