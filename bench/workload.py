"""Synthetic but realistic event streams for the benchmarks (deterministic for a seed)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from eventlog.events import Event, Kind

ROOT_NETNS = 4026531833
COMMS = (
    "nginx", "postgres", "python3", "curl", "node", "java", "redis-server", "sshd",
    "envoy", "gunicorn", "kubelet", "containerd", "dockerd", "coredns", "prometheus",
    "grafana-server", "haproxy", "mysqld", "ruby", "php-fpm",
)  # fmt: skip
# Monotonic time starts at boot: hosts are typically up for days, which makes timestamps
# need all 8 bytes of an integer column.
UPTIME_NS = 10 * 86_400 * 10**9
SERVER_PORTS = (80, 443, 5432, 6379, 8080, 3306, 9090, 53, 22, 8443)


def _addr(rng: random.Random, v6: bool) -> bytes:
    if v6:
        return bytes([0xFD, 0, 0, 0, 0, 0, 0, 0]) + rng.randbytes(8)
    return bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])


def connection_events(count: int, seed: int = 1, start_ns: int = UPTIME_NS) -> Iterator[Event]:
    """``count`` connection events: opens (connect/accept) and their closes, some failed.

    About 10 % IPv6, 3 % failed connects, connections living from microseconds to minutes,
    in non-decreasing time order as the recorder writes them.
    """
    rng = random.Random(seed)
    mono = start_ns
    open_socks: list[Event] = []
    sock_id = 0
    emitted = 0
    while emitted < count:
        mono += rng.randrange(1_000, 20_000)
        if open_socks and (len(open_socks) > 2000 or rng.random() < 0.48):
            opened = open_socks.pop(rng.randrange(len(open_socks)))
            yield opened._replace(
                kind=Kind.CLOSE,
                mono_ns=mono,
                bytes_sent=rng.randrange(0, 1 << 20),
                bytes_received=rng.randrange(0, 1 << 16),
            )
            emitted += 1
            continue
        sock_id += 1
        v6 = rng.random() < 0.1
        passive = rng.random() < 0.5
        port = rng.choice(SERVER_PORTS)
        ephemeral = rng.randrange(32768, 61000)
        local, remote = _addr(rng, v6), _addr(rng, v6)
        event = Event(
            kind=Kind.ACCEPT if passive else Kind.CONNECT,
            mono_ns=mono,
            pid=rng.randrange(300, 60000),
            comm=rng.choice(COMMS),
            netns=ROOT_NETNS if rng.random() < 0.8 else ROOT_NETNS + rng.randrange(1, 400),
            laddr=local,
            lport=port if passive else ephemeral,
            raddr=remote,
            rport=ephemeral if passive else port,
            sock_id=sock_id,
        )
        if not passive and rng.random() < 0.03:
            yield event._replace(kind=Kind.CONNECT_FAILED, extra={"error": 111})
        else:
            yield event
            open_socks.append(event)
        emitted += 1
