"""The ring buffer reader against a real BPF ring buffer: records of every size, read back
in order and byte for byte, across many wraps of the ring and moves of the reader's window."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import pytest

from recorder import bpfsys, ringbuf
from recorder.hostenv import ensure_tracefs
from recorder.ringbuf import RingReader
from tests.ebpf import require_ebpf

pytestmark = pytest.mark.ebpf

RING_PAGES = 16  # 64 KiB: a few dozen large records fill it
MAX_RECORD = 4000

# Writes the first cfg[0] bytes of source[0] to the ring buffer, once per run.
PROGRAM = f"""
struct blob {{ u8 bytes[4096]; }};
BPF_RINGBUF_OUTPUT(ring, {RING_PAGES});
BPF_ARRAY(cfg, u32, 1);
BPF_ARRAY(source, struct blob, 1);
int program(struct bpf_raw_tracepoint_args *ctx)
{{
    u32 zero = 0;
    u32 *size = cfg.lookup(&zero);
    struct blob *p = source.lookup(&zero);
    if (!size || !p)
        return 1;
    u32 n = *size & 4095;  /* bounded as the verifier wants it */
    if (!n)
        return 2;
    return ring.ringbuf_output(p, n, 0) ? 3 : 0;  /* (bcc's rewriter trips on p->bytes) */
}}
"""


@pytest.fixture
def writer() -> Any:
    require_ebpf()
    assert ensure_tracefs() is None
    from bcc import BPF  # after ensure_tracefs, as the loader does

    module = BPF(text=PROGRAM.encode())
    fd = module.load_func(b"program", BPF.RAW_TRACEPOINT).fd
    yield module, fd
    module.cleanup()


def _write(module: Any, prog_fd: int, data: bytes) -> None:
    module[b"cfg"][ctypes.c_uint32(0)] = ctypes.c_uint32(len(data))
    source = module[b"source"]
    value = source.Leaf()
    ctypes.memmove(ctypes.addressof(value), data, len(data))
    source[ctypes.c_uint32(0)] = value
    assert bpfsys.run_on_cpu(prog_fd, 0) == 0  # 3: the ring was full


@pytest.mark.parametrize("window", [ringbuf.WINDOW_BYTES, 8192], ids=["whole-ring", "moving"])
def test_every_record_comes_back_whole_and_in_order_across_wraps(
    writer: Any, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ringbuf, "WINDOW_BYTES", window)
    module, prog_fd = writer
    reader = RingReader(module[b"ring"].map_fd)
    rng = random.Random(7)
    written: list[bytes] = []
    read: list[bytes] = []
    try:
        assert reader.size == RING_PAGES * ringbuf.PAGE_SIZE
        for round_number in range(300):  # ~15 times round the ring
            for _ in range(rng.randrange(1, 6)):
                size = rng.choice([1, 7, 8, 9, 64, 100, 1000, 4095 - 8, MAX_RECORD])
                data = round_number.to_bytes(4, "little") + rng.randbytes(size)
                data = data[:size]
                _write(module, prog_fd, data)
                written.append(data)
            read.extend(reader.read())
        read.extend(reader.read())
    finally:
        reader.close()
    assert len(read) == len(written)
    assert read == written


def test_wait_returns_at_once_when_records_are_there(writer: Any) -> None:
    module, prog_fd = writer
    reader = RingReader(module[b"ring"].map_fd)
    try:
        _write(module, prog_fd, b"hello")
        reader.wait(60_000)  # would hang the test if it waited for a wake-up
        assert reader.read() == [b"hello"]
        assert reader.read() == []
    finally:
        reader.close()
