"""Parsing /proc text: real-looking fixtures, and fuzzing that nothing ever escapes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.events import cmdline_text
from recorder.procfs import (
    ParseStats,
    parse_socket_link,
    parse_stat,
    parse_tcp_table,
    walk,
)

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:0050 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   3: garbage line
   4: 0100007F:ZZZZ 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 77 1
"""

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 20 4 30 10 -1
"""


def test_ipv4_table() -> None:
    stats = ParseStats()
    rows = parse_tcp_table(TCP, stats)
    assert [(r.lport, r.rport, r.state, r.uid, r.inode) for r in rows] == [
        (8080, 0, 10, 0, 4242),
        (8080, 50000, 1, 1000, 4243),
    ]
    assert rows[1].raddr == ipaddress.ip_address("127.0.0.1").packed
    assert stats.bad_lines == 2  # TIME_WAIT (state 6) is skipped, not counted


def test_ipv6_table_and_v4_mapped() -> None:
    listener, conn = parse_tcp_table(TCP6)
    assert listener.laddr == ipaddress.ip_address("::1").packed and listener.lport == 22
    assert ipaddress.ip_address(conn.laddr) == ipaddress.ip_address("::ffff:127.0.0.1")
    assert conn.rport == 0xD431


def test_stat_with_awkward_comm() -> None:
    text = (
        "1234 (my (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10"
    )
    parsed = parse_stat(text)
    assert parsed is not None
    assert (parsed.comm, parsed.ppid, parsed.start_ticks) == ("my (weird) name", 1, 98765)
    assert parse_stat("") is None
    assert parse_stat("12 (x) S") is None


def test_cmdline_and_socket_links() -> None:
    assert cmdline_text(b"postgres\0-D\0/var/lib\0") == "postgres -D /var/lib"
    assert parse_socket_link("socket:[12345]") == 12345
    assert parse_socket_link("pipe:[12345]") is None
    assert parse_socket_link("socket:[12x]") is None


printable_lines = st.lists(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda a, b, c, d: (
                f"  {a}: {b} {c} {d} 00000000:00000000 00:00000000 00000000 {a} 0 {b}"
            ),
            st.integers(-(10**30), 10**30),
            st.text("0123456789ABCDEF:", max_size=40),
            st.text("0123456789ABCDEFx:", max_size=40),
            st.text("0123456789ABCDEF", max_size=4),
        ),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(printable_lines)
def test_tcp_parser_never_raises(lines: list[str]) -> None:
    stats = ParseStats()
    text = "header\n" + "\n".join(lines)
    rows = parse_tcp_table(text, stats)
    assert len(rows) + stats.bad_lines <= len(text.splitlines()) - 1
    for row in rows:
        assert len(row.laddr) in (4, 16) and 0 <= row.lport <= 0xFFFF


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_stat_parser_never_raises(text: str) -> None:
    parsed = parse_stat(text)
    assert parsed is None or parsed.ppid >= 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_cmdline_and_link_parsers_never_raise(raw: bytes) -> None:
    assert isinstance(cmdline_text(raw), str)
    parse_socket_link(raw.decode("latin-1"))


def test_walk_of_this_host_sees_this_process() -> None:
    import os

    result = walk()
    me = [p for p in result.processes if p.pid == os.getpid()]
    assert me and me[0].ppid == os.getppid()
    assert result.finished_mono_ns >= result.started_mono_ns


def test_walk_names_every_process_holding_a_connection() -> None:
    """A connected loopback socket held by this process and a child it forked: the walk
    names both as its holders, the lower as the row's pid."""
    import os
    import signal
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        served, _ = listener.accept()
        child = os.fork()
        if child == 0:  # holds every socket its parent held, until killed
            signal.pause()
            os._exit(0)
        try:
            inode = os.fstat(served.fileno()).st_ino
            result = walk()
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            served.close()
            client.close()
    assert result.holders[inode] == sorted([os.getpid(), child])
    (row,) = [c for c in result.connections if c.inode == inode]
    assert row.pid == min(os.getpid(), child)
