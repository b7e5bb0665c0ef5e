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
