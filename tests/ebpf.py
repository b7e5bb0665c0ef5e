"""The capability gate for tests that load programs into the running kernel."""

from __future__ import annotations

from recorder.capture import why_ebpf_unavailable
from tests.capabilities import require


def require_ebpf() -> None:
    reason = why_ebpf_unavailable()
    require(reason is None, f"eBPF capture ({reason})")
