"""Facts about the host a recording runs on."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from eventlog.recordings import HostIdentity


def _read_first_line(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def host_identity() -> HostIdentity:
    return HostIdentity(
        host_id=socket.gethostname(),
        machine_id=_read_first_line("/etc/machine-id"),
        boot_id=_read_first_line("/proc/sys/kernel/random/boot_id"),
        kernel_release=os.uname().release,
    )


def netns_inode(pid: int | str = "self") -> int | None:
    """The inode of a process's network namespace (what `readlink /proc/<pid>/ns/net` shows)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def parse_fib_trie_locals(text: str) -> list[str]:
    """IPv4 addresses of this host: the entries /proc/net/fib_trie marks ``host LOCAL``."""
    found = set()
    last = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif "host LOCAL" in stripped and last:
            found.add(last)
    return sorted(found)


def parse_if_inet6(text: str) -> list[tuple[str, int]]:
    """(address, prefix length) of every IPv6 address in /proc/net/if_inet6."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            found.append((str(address), int(fields[2], 16)))
        except ValueError:
            continue
    return sorted(found)


def parse_route_networks(text: str) -> list[str]:
    """IPv4 networks this host reaches directly (routes without a gateway) from /proc/net/route."""
    networks = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, mask = (int(fields[i], 16) for i in (1, 2, 7))
        except ValueError:
            continue
        if gateway or not mask:
            continue
        address = ipaddress.IPv4Address(socket.ntohl(destination))
        netmask = ipaddress.IPv4Address(socket.ntohl(mask))
        networks.add(str(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)))
    return sorted(networks)


def local_addresses() -> dict[str, list[str]]:
    """This host's addresses and directly connected networks (root network namespace)."""
    v6 = parse_if_inet6(_read("/proc/net/if_inet6"))
    networks = parse_route_networks(_read("/proc/net/route"))
    networks += sorted(
        {str(ipaddress.IPv6Network(f"{a}/{p}", strict=False)) for a, p in v6 if p < 128}
    )
    return {
        "addresses": parse_fib_trie_locals(_read("/proc/net/fib_trie")) + [a for a, _ in v6],
        "networks": networks,
    }
