"""A /proc walk over trees where processes vanish half-read and files hold garbage, a walk of
the real /proc while processes come and go, and conntrack messages that do not parse."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.conntrack import entry_of
from recorder.procfs import ParseStats, walk

GOOD_STAT = "{pid} (worker {pid}) S 1 {pid} {pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0"
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP_LINE = "   0: 0100007F:1F90 0100007F:{port:04X} 01 00000000:00000000 00:00000000 00000000  0 0 {inode} 1\n"

# What is left of a process directory when the walk reaches it.
FATES = ("whole", "gone", "stat-only", "garbage-stat", "no-fd", "dangling-fd", "empty-files")

process = st.tuples(st.sampled_from(FATES), st.integers(0, 2**64), st.integers(1, 2**31))
tcp_text = st.lists(
    st.one_of(
        st.builds(
            lambda p, i: TCP_LINE.format(port=p, inode=i),
            st.integers(0, 0xFFFF),
            st.integers(0, 2**40),
        ),
        st.text(max_size=120).map(lambda t: t.replace("\n", " ") + "\n"),
        st.just("   7: 0100007F:1F90\n"),  # truncated
    ),
    max_size=8,
).map(lambda lines: TCP_HEADER + "".join(lines))


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _fake_process(proc: Path, pid: int, fate: str, start: int, inode: int, tcp: str) -> bool:
    """Lay out /proc/<pid> as ``fate`` leaves it; True if the walk should list the process."""
    base = proc / str(pid)
    base.mkdir()
    if fate == "gone":  # listed, then exited before anything was read
        return False
    stat = GOOD_STAT.format(pid=pid, start=start)
    if fate == "garbage-stat":
        _write(base / "stat", stat[: len(stat) // 3] + "\x00\xff)")
        return False
    _write(base / "stat", stat)
    readable = start < 1 << 62  # a start time past 2**62 ticks is garbage, and skipped
    if fate == "stat-only":  # exited right after its stat was read
        return readable
    _write(base / "cmdline", b"" if fate == "empty-files" else b"/bin/worker\x00--flag\x00")
    _write(base / "cgroup", "" if fate == "empty-files" else "0::/system.slice/x.service\n")
    _write(base / "ns" / "net", "")
    _write(base / "net" / "tcp", "" if fate == "empty-files" else tcp)
    if fate != "no-fd":
        (base / "fd").mkdir()
        os.symlink(f"socket:[{inode}]", base / "fd" / "3")
        os.symlink("/dev/null", base / "fd" / "0")
        if fate == "dangling-fd":
            os.symlink("socket:[not-a-number]", base / "fd" / "4")
    return readable


@settings(max_examples=150, deadline=None)
@given(st.lists(process, max_size=12), tcp_text)
def test_walk_over_a_broken_tree_never_raises(
    processes: list[tuple[str, int, int]], tcp: str
) -> None:
    proc = Path(tempfile.mkdtemp(prefix="fake-proc-"))
    try:
        expected = []
        for number, (fate, start, inode) in enumerate(processes, start=100):
            if _fake_process(proc, number, fate, start, inode, tcp):
                expected.append(number)
        _write(proc / "self" / "stat", "not a pid directory")  # ignored: not a number
        result = walk(proc)
    finally:
        shutil.rmtree(proc)
    assert [p.pid for p in result.processes] == expected
    assert result.stats.vanished == len(processes) - len(expected)
    for conn in result.connections:
        assert 0 <= conn.lport <= 0xFFFF and len(conn.laddr) == 4
    assert result.finished_mono_ns >= result.started_mono_ns


def test_walk_of_the_real_proc_while_processes_come_and_go() -> None:
    stop = threading.Event()

    def churn() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            children = [subprocess.Popen(["sleep", "0.01"]) for _ in range(8)]
            for child in children:
                child.wait()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(15):
            result = walk()
            assert any(p.pid == os.getpid() for p in result.processes)
    finally:
        stop.set()
        thread.join(timeout=30)


class FakeMessage:
    """Just enough of a pyroute2 conntrack message: nested attributes by name."""

    def __init__(self, attrs: dict[tuple[str, ...], Any], header: dict[str, int]) -> None:
        self.attrs = attrs
        self.header = header

    def get_nested(self, *path: str) -> Any:
        return self.attrs.get(path)

    def get_attr(self, name: str) -> Any:
        return self.attrs.get((name,))

    def __getitem__(self, key: str) -> Any:
        return {"header": self.header}[key]


ATTRIBUTE_PATHS = [
    ("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_NUM"),
    ("CTA_TUPLE_ORIG", "CTA_TUPLE_IP", "CTA_IP_V4_SRC"),
    ("CTA_TUPLE_ORIG", "CTA_TUPLE_IP", "CTA_IP_V4_DST"),
    ("CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_IP_V4_SRC"),
    ("CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_IP_V6_DST"),
    ("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT"),
    ("CTA_TUPLE_REPLY", "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT"),
    ("CTA_PROTOINFO", "CTA_PROTOINFO_TCP", "CTA_PROTOINFO_TCP_STATE"),
    ("CTA_STATUS",),
    ("CTA_ID",),
]
values = st.one_of(
    st.none(),
    st.just(6),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["10.0.0.1", "::1", "fe80::1%eth0", "300.1.1.1", ""]),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(ATTRIBUTE_PATHS), values))
def test_conntrack_messages_that_do_not_parse_are_counted(
    attrs: dict[tuple[str, ...], Any],
) -> None:
    stats = ParseStats()
    entry = entry_of(FakeMessage(attrs, {"type": 0, "flags": 0}), netns=1, stats=stats)
    if entry is not None:
        assert stats.bad_lines == 0
        assert len(entry.orig_src) in (4, 16) and isinstance(entry.orig_sport, int)
    assert stats.bad_lines in (0, 1)


def test_a_whole_conntrack_message_parses() -> None:
    attrs = {
        ("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_NUM"): 6,
        ("CTA_TUPLE_ORIG", "CTA_TUPLE_IP", "CTA_IP_V4_SRC"): "10.0.0.2",
        ("CTA_TUPLE_ORIG", "CTA_TUPLE_IP", "CTA_IP_V4_DST"): "10.0.0.1",
        ("CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_IP_V4_SRC"): "192.168.1.5",
        ("CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_IP_V4_DST"): "10.0.0.2",
        ("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT"): 40000,
        ("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT"): 80,
        ("CTA_TUPLE_REPLY", "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT"): 8080,
        ("CTA_TUPLE_REPLY", "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT"): 40000,
        ("CTA_ID",): 77,
    }
    stats = ParseStats()
    entry = entry_of(FakeMessage(attrs, {"type": 0, "flags": 0}), netns=9, stats=stats)
    assert entry is not None and stats.bad_lines == 0
    assert (entry.orig_dport, entry.reply_sport, entry.ct_id, entry.netns) == (80, 8080, 77, 9)
    assert entry.reply_src == bytes([192, 168, 1, 5])
