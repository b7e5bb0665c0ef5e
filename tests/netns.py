"""Network namespaces and veth pairs for tests, made with iproute2 and always removed."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_numbers = itertools.count(1)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_netns(name: str, *command: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *command], check=True, capture_output=True)


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str  # this side's veth address

    @property
    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino


@contextmanager
def veth_pair(subnet: str = "10.213") -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by a veth pair: ``<subnet>.0.1`` and ``<subnet>.0.2`` (/24)."""
    number = next(_numbers)
    tag = f"{os.getpid() % 10000}x{number}"
    left, right = f"sct-a-{tag}", f"sct-b-{tag}"
    made: list[str] = []
    try:
        for name in (left, right):
            ip("netns", "add", name)
            made.append(name)
            in_netns(name, "ip", "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            f"va{tag}",
            "netns",
            left,
            "type",
            "veth",
            "peer",
            "name",
            f"vb{tag}",
            "netns",
            right,
        )
        in_netns(left, "ip", "addr", "add", f"{subnet}.0.1/24", "dev", f"va{tag}")
        in_netns(right, "ip", "addr", "add", f"{subnet}.0.2/24", "dev", f"vb{tag}")
        in_netns(left, "ip", "link", "set", f"va{tag}", "up")
        in_netns(right, "ip", "link", "set", f"vb{tag}", "up")
        yield Namespace(left, f"{subnet}.0.1"), Namespace(right, f"{subnet}.0.2")
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextmanager
def bridged(count: int, subnet: str) -> Iterator[list[Namespace]]:
    """``count`` namespaces on one bridge (in a namespace of its own), as hosts of one LAN:
    ``<subnet>.0.1``, ``<subnet>.0.2``, ... (/24)."""
    number = next(_numbers)
    tag = f"{os.getpid() % 10000}y{number}"
    bridge = f"sct-br-{tag}"
    names = [f"sct-h{index}-{tag}" for index in range(count)]
    made: list[str] = []
    try:
        for name in (bridge, *names):
            ip("netns", "add", name)
            made.append(name)
            in_netns(name, "ip", "link", "set", "lo", "up")
        in_netns(bridge, "ip", "link", "add", "br0", "type", "bridge")
        in_netns(bridge, "ip", "link", "set", "br0", "up")
        hosts = []
        for index, name in enumerate(names):
            inside, outside = f"h{index}{tag}", f"p{index}{tag}"
            ip("link", "add", inside, "netns", name, "type", "veth", "peer", "name", outside,
               "netns", bridge)  # fmt: skip
            in_netns(bridge, "ip", "link", "set", outside, "master", "br0")
            in_netns(bridge, "ip", "link", "set", outside, "up")
            address = f"{subnet}.0.{index + 1}"
            in_netns(name, "ip", "addr", "add", f"{address}/24", "dev", inside)
            in_netns(name, "ip", "link", "set", inside, "up")
            hosts.append(Namespace(name, address))
        yield hosts
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def interface_of(namespace: Namespace) -> str:
    """The name of the one veth a namespace of ``bridged`` or ``veth_pair`` has."""
    out = subprocess.run(
        ["ip", "netns", "exec", namespace.name, "ip", "-o", "link", "show", "type", "veth"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return out.split(":")[1].strip().split("@")[0]
