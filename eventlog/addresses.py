"""Addresses as people write them, and what kind they are: defined here, once.

The log keeps addresses as raw network-order bytes (4 for IPv4, 16 for IPv6, v4-mapped IPv6
as the kernel reported it). Everything that shows one, or asks whether it is loopback or
public, goes through these functions (the derived store keeps their answers per address;
an endpoint, ``address:port``, is written by its ``endpoint`` macro, replay.derived.views).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=1 << 16)
def address_text(raw: bytes | None) -> str:
    """An address as people write it; v4-mapped IPv6 shown as plain IPv4; "?" if none."""
    if not raw:
        return "?"
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


@lru_cache(maxsize=1 << 14)
def parse(text: str) -> IPAddress | None:
    """The address ``text`` names, or None if it names none ("?", say)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_loopback(text: str) -> bool:
    address = parse(text)
    return bool(address and address.is_loopback)


def is_public(text: str) -> bool:
    """A globally routable address: what Scope calls the Internet."""
    address = parse(text)
    return bool(address and address.is_global)


FAMILIES = ("inet", "inet6")


def family(raw: bytes) -> str:
    return FAMILIES[0] if len(raw) == 4 else FAMILIES[1]


def is_unspecified(raw: bytes) -> bool:
    """0.0.0.0 or :: (a socket listening on every address)."""
    return not any(raw)
