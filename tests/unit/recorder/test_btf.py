"""The BTF reader on hand-built blobs: nested and anonymous members, typedefs, bad data."""

from __future__ import annotations

import struct

import pytest

from recorder.btf import (
    KIND_ARRAY,
    KIND_CONST,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
    BtfError,
)


class BlobBuilder:
    """Writes a BTF blob: header, type section, string section."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def _header(
        self, name: str, kind: int, vlen: int, size_or_type: int, kind_flag: bool = False
    ) -> int:
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack("<III", self.name(name), info, size_or_type)
        self.count += 1
        return self.count

    def int_type(self, name: str, size: int) -> int:
        type_id = self._header(name, KIND_INT, 0, size)
        self.types += struct.pack("<I", size * 8)
        return type_id

    def pointer(self, target: int) -> int:
        return self._header("", KIND_PTR, 0, target)

    def array(self, element: int, index: int, count: int) -> int:
        type_id = self._header("", KIND_ARRAY, 0, 0)
        self.types += struct.pack("<III", element, index, count)
        return type_id

    def typedef(self, name: str, target: int) -> int:
        return self._header(name, KIND_TYPEDEF, 0, target)

    def const(self, target: int) -> int:
        return self._header("", KIND_CONST, 0, target)

    def enum(self, name: str, enumerators: list[tuple[str, int]], signed: bool = False) -> int:
        type_id = self._header(name, KIND_ENUM, len(enumerators), 4, kind_flag=signed)
        for enumerator, value in enumerators:
            self.types += struct.pack("<Ii" if signed else "<II", self.name(enumerator), value)
        return type_id

    def enum64(self, name: str, enumerators: list[tuple[str, int]]) -> int:
        type_id = self._header(name, KIND_ENUM64, len(enumerators), 8)
        for enumerator, value in enumerators:
            self.types += struct.pack(
                "<III", self.name(enumerator), value & 0xFFFFFFFF, value >> 32
            )
        return type_id

    def composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        bitfields: bool = False,
    ) -> int:
        type_id = self._header(name, kind, len(members), size, kind_flag=bitfields)
        for member_name, member_type, offset in members:
            self.types += struct.pack("<III", self.name(member_name), member_type, offset)
        return type_id

    def blob(self) -> bytes:
        header = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def sample_btf() -> bytes:
    b = BlobBuilder()
    u32 = b.int_type("unsigned int", 4)
    u64 = b.int_type("long long unsigned int", 8)
    ns_common = b.composite(KIND_STRUCT, "ns_common", 16, [("stashed", u64, 0), ("inum", u32, 64)])
    net = b.composite(KIND_STRUCT, "net", 64, [("refs", u64, 0), ("ns", ns_common, 128)])
    net_ptr = b.pointer(net)
    possible_net = b.composite(KIND_STRUCT, "", 8, [("net", net_ptr, 0)])
    possible_net_t = b.typedef("possible_net_t", possible_net)
    anon_union = b.composite(KIND_UNION, "", 8, [("skc_hash", u32, 0), ("skc_u16hashes", u32, 0)])
    u8 = b.int_type("unsigned char", 1)
    in6_addr = b.composite(KIND_STRUCT, "in6_addr", 16, [("s6_addr", b.array(u8, u32, 16), 0)])
    sock_common = b.composite(
        KIND_STRUCT,
        "sock_common",
        56,
        [
            ("skc_daddr", u32, 0),
            ("", anon_union, 64),
            ("skc_net", b.const(possible_net_t), 192),
            ("skc_v6_daddr", in6_addr, 256),
            ("skc_cookies", b.array(b.array(u64, u32, 2), u32, 3), 384),
        ],
    )
    b.composite(KIND_STRUCT, "sock", 128, [("__sk_common", sock_common, 0), ("sk_err", u32, 640)])
    b.composite(KIND_STRUCT, "bits", 4, [("flag", u32, (1 << 24) | 3)], bitfields=True)
    b.composite(KIND_STRUCT, "sock", 0, [])  # a forward-declared duplicate is ignored
    return b.blob()


def test_offsets_through_nested_typedefs_and_anonymous_members() -> None:
    btf = Btf.parse(sample_btf())
    assert btf.offset_of("sock", "__sk_common.skc_net.net") == 24
    assert btf.offset_of("net", "ns.inum") == 24
    assert btf.offset_of("sock", "sk_err") == 80
    assert btf.offset_of("sock_common", "skc_u16hashes") == 8
    assert btf.size_of("sock") == 128


def test_member_sizes_of_ints_pointers_structs_and_arrays() -> None:
    btf = Btf.parse(sample_btf())
    assert btf.member_size("sock", "__sk_common.skc_daddr") == 4
    assert btf.member_size("sock", "__sk_common.skc_net") == 8  # const typedef of a struct
    assert btf.member_size("sock", "__sk_common.skc_net.net") == 8  # a pointer
    assert btf.member_size("sock", "__sk_common.skc_v6_daddr") == 16
    assert btf.member_size("in6_addr", "s6_addr") == 16
    assert btf.member_size("sock_common", "skc_cookies") == 48  # u64[3][2]
    assert btf.member_size("net", "ns") == 16


def test_missing_struct_member_and_bitfield_are_errors() -> None:
    btf = Btf.parse(sample_btf())
    with pytest.raises(BtfError, match="struct task_struct"):
        btf.offset_of("task_struct", "files")
    with pytest.raises(BtfError, match="no member"):
        btf.offset_of("sock", "sk_nope")
    with pytest.raises(BtfError, match="bitfield"):
        btf.offset_of("bits", "flag")


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x9f\xeb", b"\x00" * 32, sample_btf()[:40], sample_btf()[:24] + b"\xff" * 12],
)
def test_malformed_blobs_raise_btf_error(blob: bytes) -> None:
    with pytest.raises(BtfError):
        Btf.parse(blob)


def test_enumerators_of_every_enum_kind() -> None:
    b = BlobBuilder()
    b.enum("cgroup_subsys_id", [("cpuset_cgrp_id", 0), ("memory_cgrp_id", 4), ("pids_cgrp_id", 11)])
    b.enum("", [("below", -3)], signed=True)
    b.enum64("wide", [("big", 1 << 40)])
    btf = Btf.parse(b.blob())
    assert [btf.enum_value(name) for name in ("memory_cgrp_id", "pids_cgrp_id")] == [4, 11]
    assert (btf.enum_value("below"), btf.enum_value("big")) == (-3, 1 << 40)
    with pytest.raises(BtfError, match="enumerator rdma_cgrp_id"):
        btf.enum_value("rdma_cgrp_id")
