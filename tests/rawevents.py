"""Stage records built byte for byte as the kernel programs build them (bpf/tcp_events.h)."""

from __future__ import annotations

from eventlog.kernel_records import ARGS, EVENT, HEADER

ROOT_NETNS = 4026531833


def raw_event(
    kind: int,
    ts: int = 1_000,
    *,
    sock_id: int = 0,
    sent: int = 0,
    received: int = 0,
    pid: int = 0,
    netns: int = ROOT_NETNS,
    aux: int = 0,
    lport: int = 0,
    rport: int = 0,
    family: int = 2,
    flags: int = 0,
    aux2: int = 0,
    comm: bytes = b"",
    laddr: bytes = b"",
    raddr: bytes = b"",
    filename: bytes | None = None,
) -> bytes:
    if filename is not None:
        tail = filename.ljust(56, b"\0")
    else:
        tail = laddr.ljust(16, b"\0") + raddr.ljust(16, b"\0") + b"\0" * 24
    return EVENT.pack(
        ts, sock_id, sent, received, pid, netns, aux, lport, rport, kind, family, flags, aux2,
        comm.ljust(16, b"\0"), tail,
    )  # fmt: skip


def record(*events: bytes, cpu: int = 0) -> bytes:
    return HEADER.pack(len(events), cpu, 0) + b"".join(events)


def args_piece(ts: int, pid: int, offset: int, whole: int, data: bytes) -> bytes:
    """An EV_ARGS record: ``data`` is the command line's bytes at ``offset``."""
    laid = data.ljust(72, b"\0")  # laid over comm and the address union, as the programs do
    return EVENT.pack(
        ts, 0, 0, 0, pid, 0, offset, len(data), 0, ARGS, 0, 0, whole, laid[:16], laid[16:],
    )  # fmt: skip
