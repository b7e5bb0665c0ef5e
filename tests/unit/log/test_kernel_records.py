"""Decoding stage records: byte fixtures built like the kernel programs build them, and the
record layout checked against the C header by the C compiler itself."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from eventlog.events import Event, Kind
from eventlog.kernel_records import (
    ARGS,
    ARGS_PIECE,
    EVENT,
    HEADER,
    KIND_OFFSET,
    DecodeError,
    decode_record,
    holds_command_lines,
    record_count,
)
from recorder.capture import BPF_DIR
from tests.rawevents import ROOT_NETNS, args_piece, raw_event, record


def test_connection_events_ipv4_ipv6_and_failed() -> None:
    data = record(
        raw_event(Kind.CONNECT, 10, sock_id=7, pid=42, comm=b"curl", lport=40000, rport=80,
                  laddr=bytes([10, 0, 0, 1]), raddr=bytes([93, 184, 216, 34])),
        raw_event(Kind.ACCEPT, 11, sock_id=8, pid=43, comm=b"nginx", lport=443, rport=50000,
                  family=10, laddr=b"\0" * 15 + b"\1", raddr=b"\0" * 10 + b"\xff\xff\x7f\0\0\1",
                  flags=1),
        raw_event(Kind.CLOSE, 12, sock_id=7, pid=42, comm=b"curl", sent=1234, received=99,
                  lport=40000, rport=80, laddr=bytes([10, 0, 0, 1]), raddr=bytes([93, 184, 216, 34])),
        raw_event(Kind.CONNECT_FAILED, 13, sock_id=9, pid=42, comm=b"curl", aux=111, lport=40001,
                  rport=81, laddr=bytes([127, 0, 0, 1]), raddr=bytes([127, 0, 0, 1])),
    )  # fmt: skip
    connect, accept, close, failed = decode_record(data)
    assert connect == Event(
        Kind.CONNECT, 10, 42, "curl", ROOT_NETNS, bytes([10, 0, 0, 1]), 40000,
        bytes([93, 184, 216, 34]), 80, 7,
    )  # fmt: skip
    assert accept.laddr == b"\0" * 15 + b"\1" and len(accept.raddr or b"") == 16
    assert (accept.pid, accept.comm, accept.lport) == (43, "nginx", 443)
    assert (close.bytes_sent, close.bytes_received) == (1234, 99)
    assert connect.bytes_sent is None
    assert failed.kind == Kind.CONNECT_FAILED and failed.extra == {"error": 111}


def test_unattributed_close_has_no_process() -> None:
    (close,) = decode_record(record(raw_event(Kind.CLOSE, 5, flags=2, lport=22, rport=5000)))
    assert close.pid is None and close.comm is None and close.sock_id is None


def test_process_events() -> None:
    exec_event, exit_event = decode_record(
        record(
            raw_event(
                Kind.EXEC, 1, pid=500, aux=1, comm=b"bash", filename=b"/usr/bin/bash", flags=0
            ),
            raw_event(Kind.EXIT, 2, pid=500, aux=1, aux2=256, comm=b"bash"),
        )
    )
    assert exec_event == Event(
        Kind.EXEC, 1, 500, "bash", ROOT_NETNS, extra={"ppid": 1, "filename": "/usr/bin/bash"}
    )
    assert exit_event.extra == {"ppid": 1, "exit_code": 256}


def test_fork_and_owner_events() -> None:
    """A FORK names the child and the process it forked from; an OWNER the process that
    closed a socket it did not open, with the socket and its opener."""
    fork, owner = decode_record(
        record(
            raw_event(Kind.FORK, 1, sock_id=8123, pid=501, aux=500, comm=b"postgres"),
            raw_event(Kind.OWNER, 2, sock_id=7, pid=501, aux=500, aux2=9, comm=b"postgres",
                      lport=5432, rport=40000, laddr=bytes([127, 0, 0, 1]),
                      raddr=bytes([127, 0, 0, 1]), flags=1),
        )
    )  # fmt: skip
    assert fork == Event(
        Kind.FORK, 1, 501, "postgres", ROOT_NETNS, extra={"ppid": 500, "cgroup_id": 8123}
    )
    assert owner == Event(
        Kind.OWNER, 2, 501, "postgres", ROOT_NETNS, bytes([127, 0, 0, 1]), 5432,
        bytes([127, 0, 0, 1]), 40000, 7, extra={"owner": 500, "state": 9},
    )  # fmt: skip


def test_exec_carries_its_cgroup_id() -> None:
    """An EXEC's socket field holds the cgroup id of the process: its container, known
    without any /proc walk."""
    (exec_event,) = decode_record(
        record(raw_event(Kind.EXEC, 1, sock_id=8123, pid=500, aux=1, filename=b"/bin/nc"))
    )
    assert exec_event.sock_id is None
    assert exec_event.extra == {"ppid": 1, "filename": "/bin/nc", "cgroup_id": 8123}


def test_command_line_pieces_join_their_exec() -> None:
    """The pieces after an EXEC (its pid and time) are its command line, whatever their
    order; what the record holds of a longer one is flagged; empty pieces (the unused room
    of a record of its own) are not events."""
    line = b"curl\0-s\0http://example.com/" + b"p" * 70 + b"\0"
    data = record(
        raw_event(Kind.EXEC, 7, pid=42, aux=1, comm=b"curl", filename=b"/usr/bin/curl"),
        args_piece(7, 42, 64, len(line) + 100, line[64:]),
        args_piece(7, 42, 0, len(line) + 100, line[:64]),
        args_piece(7, 42, 0, 0, b""),
        raw_event(Kind.EXIT, 8, pid=41, aux=1, comm=b"sh"),
    )
    assert holds_command_lines(data) and record_count(data) == 5
    exec_event, exit_event = decode_record(data)
    assert exec_event.extra == {
        "ppid": 1,
        "filename": "/usr/bin/curl",
        "cmdline": "curl -s http://example.com/" + "p" * 70,
        "cmdline_truncated": True,
    }
    assert exit_event.kind == Kind.EXIT


def test_an_exec_without_pieces_keeps_its_program_only() -> None:
    """--redact-cmdline: no pieces; and a piece of another process is not this one's."""
    data = record(
        raw_event(Kind.EXEC, 7, pid=42, aux=1, comm=b"curl", filename=b"/usr/bin/curl"),
        args_piece(7, 43, 0, 5, b"evil\0"),
    )
    (exec_event,) = decode_record(data)
    assert exec_event.extra == {"ppid": 1, "filename": "/usr/bin/curl"}
    assert not holds_command_lines(record(raw_event(Kind.EXEC, 7, pid=42, filename=b"/x")))


def test_truncated_filename_is_flagged() -> None:
    (event,) = decode_record(
        record(raw_event(Kind.EXEC, pid=1, filename=b"/x" * 27 + b"y", flags=4))
    )
    assert event.extra is not None and event.extra["filename_truncated"] is True


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00",
        HEADER.pack(2, 0, 0) + b"\0" * 128,
        record(raw_event(99)),
        record(raw_event(Kind.SNAPSHOT)),
    ],  # a kind of the log's own, never the kernel's
)
def test_malformed_records(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_record(data)


LAYOUT_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64;
#include "tcp_events.h"
#define F(name) printf(#name " %zu\n", offsetof(struct event, name));
int main(void) {
    printf("event %zu\nheader %zu\n", sizeof(struct event), sizeof(struct stage_header));
    printf("EV_ARGS %d\nARGS_PIECE %d\n", EV_ARGS, ARGS_PIECE);
    printf("EV_CONNECT %d\nEV_ACCEPT %d\nEV_CLOSE %d\nEV_CONNECT_FAILED %d\n", EV_CONNECT,
           EV_ACCEPT, EV_CLOSE, EV_CONNECT_FAILED);
    printf("EV_EXEC %d\nEV_EXIT %d\nEV_FORK %d\nEV_OWNER %d\n", EV_EXEC, EV_EXIT, EV_FORK,
           EV_OWNER);
    F(ts_ns) F(sock_id) F(bytes_sent) F(bytes_received) F(pid) F(netns) F(aux) F(lport)
    F(rport) F(kind) F(family) F(flags) F(aux2) F(comm) F(laddr) F(raddr) F(filename) F(args)
    return 0;
}
"""


def test_python_layout_matches_the_c_header(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is part of the build environment"
    source = tmp_path / "layout.c"
    source.write_text(LAYOUT_PROGRAM)
    binary = tmp_path / "layout"
    subprocess.run([compiler, f"-I{BPF_DIR}", str(source), "-o", str(binary)], check=True)
    layout = dict(
        (name, int(value))
        for name, value in (
            line.split() for line in subprocess.check_output([str(binary)], text=True).splitlines()
        )
    )
    python_offsets = {}
    offset = 0
    for name, code in zip(
        ["ts_ns", "sock_id", "bytes_sent", "bytes_received", "pid", "netns", "aux", "lport",
         "rport", "kind", "family", "flags", "aux2", "comm", "laddr"],
        ["Q", "Q", "Q", "Q", "I", "I", "I", "H", "H", "B", "B", "H", "I", "16s", "56s"],
        strict=True,
    ):  # fmt: skip
        python_offsets[name] = offset
        offset += struct.calcsize("<" + code)
    assert layout["event"] == EVENT.size
    assert layout["header"] == HEADER.size
    for name, value in python_offsets.items():
        assert layout[name] == value, name
    assert layout["raddr"] == layout["laddr"] + 16
    assert layout["filename"] == layout["laddr"]
    # a piece of a command line is laid from comm on; the decoder finds kinds at "kind"
    assert layout["args"] == layout["comm"] and (layout["EV_ARGS"], layout["ARGS_PIECE"]) == (
        ARGS,
        ARGS_PIECE,
    )
    assert layout["kind"] == KIND_OFFSET
    # the kernel's kinds are the log's
    for kind in ("CONNECT", "ACCEPT", "CLOSE", "CONNECT_FAILED", "EXEC", "EXIT", "FORK", "OWNER"):
        assert layout[f"EV_{kind}"] == Kind[kind], kind
