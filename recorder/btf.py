"""Struct member offsets of the running kernel, from its BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever kernel headers are installed, which on many hosts belong to an
older kernel: a ``sk->field`` read through them lands at the wrong offset (seen: the netns
inode read at 144 where the running kernel has it at 176). So the programs read kernel memory
at offsets taken from BTF at start-up and passed in as ``-D`` constants.

The parser is pure: ``Btf.parse(data)`` over bytes, tested on hand-built blobs.
Format: linux/Documentation/bpf/btf.rst (header, type section, string section).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
POINTER_SIZE = struct.calcsize("P")  # the running kernel's, as the recorder runs natively

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte common header, per kind: (fixed, per vlen item).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BtfError(Exception):
    """The BTF is unreadable, or lacks a struct or member a program needs."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kind_flag: bool
    offset: int  # where its trailer starts in the type section


class Btf:
    """An index over one BTF blob: types by id, structs and unions by name."""

    def __init__(self, types: list[BtfType | None], type_data: bytes, strings: bytes) -> None:
        self._types = types
        self._type_data = type_data
        self._strings = strings
        self._by_name: dict[str, list[int]] = {}
        for type_id, btf_type in enumerate(types):
            if btf_type is not None and btf_type.kind in (KIND_STRUCT, KIND_UNION):
                self._by_name.setdefault(btf_type.name, []).append(type_id)

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        if len(data) < 24:
            raise BtfError("BTF data too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        type_data = data[hdr_len + type_off : hdr_len + type_off + type_len]
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if len(type_data) != type_len or len(strings) != str_len:
            raise BtfError("BTF sections run past the end of the data")
        return cls(_parse_types(type_data, strings), type_data, strings)

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> Btf:
        try:
            return cls.parse(path.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror}") from exc

    def struct_id(self, name: str) -> int:
        candidates = [
            type_id
            for type_id in self._by_name.get(name, [])
            if (t := self._types[type_id]) is not None and t.vlen > 0
        ]
        if not candidates:
            raise BtfError(f"struct {name} is not in the kernel's BTF")
        return candidates[0]

    def size_of(self, name: str) -> int:
        btf_type = self._types[self.struct_id(name)]
        assert btf_type is not None
        return btf_type.size_or_type

    def members(self, type_id: int) -> list[Member]:
        btf_type = self._types[type_id]
        if btf_type is None or btf_type.kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"type {type_id} is not a struct or union")
        result = []
        for index in range(btf_type.vlen):
            name_off, member_type, offset = struct.unpack_from(
                "<III", self._type_data, btf_type.offset + 12 * index
            )
            if btf_type.kind_flag:
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield_size = offset, 0
            result.append(
                Member(_string(self._strings, name_off), member_type, bit_offset, bitfield_size)
            )
        return result

    def resolve(self, type_id: int) -> int:
        """Strip typedefs and qualifiers."""
        seen = 0
        while True:
            btf_type = self._types[type_id]
            if btf_type is None or btf_type.kind not in _QUALIFIERS:
                return type_id
            type_id = btf_type.size_or_type
            seen += 1
            if seen > 64:
                raise BtfError("typedef loop in BTF")

    def enum_value(self, name: str) -> int:
        """The value of the enumerator ``name`` (of any enum: C enumerators share one scope)."""
        for btf_type in self._types:
            if btf_type is None or btf_type.kind not in (KIND_ENUM, KIND_ENUM64):
                continue
            width = 8 if btf_type.kind == KIND_ENUM else 12
            for index in range(btf_type.vlen):
                at = btf_type.offset + width * index
                (name_off,) = struct.unpack_from("<I", self._type_data, at)
                if _string(self._strings, name_off) != name:
                    continue
                if btf_type.kind == KIND_ENUM:
                    signed = "<i" if btf_type.kind_flag else "<I"
                    return int(struct.unpack_from(signed, self._type_data, at + 4)[0])
                low, high = struct.unpack_from("<II", self._type_data, at + 4)
                value = int(low) | int(high) << 32
                return value - (1 << 64) if btf_type.kind_flag and high >> 31 else value
        raise BtfError(f"enumerator {name} is not in the kernel's BTF")

    def offset_of(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (``a.b.c``, through nested structs) in ``struct_name``."""
        return self.member(struct_name, path)[0]

    def member_size(self, struct_name: str, path: str) -> int:
        """Size in bytes of the member ``path`` of ``struct_name``."""
        return self.type_size(self.member(struct_name, path)[1])

    def type_size(self, type_id: int, _depth: int = 0) -> int:
        """Size in bytes of a type (typedefs and qualifiers stripped)."""
        if _depth > 64:
            raise BtfError("array nesting loop in BTF")
        btf_type = self._types[self.resolve(type_id)]
        if btf_type is None:
            raise BtfError(f"type {type_id} has no size")
        if btf_type.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64):
            return btf_type.size_or_type
        if btf_type.kind == KIND_PTR:
            return POINTER_SIZE
        if btf_type.kind == KIND_ARRAY:
            element, _index, count = struct.unpack_from("<III", self._type_data, btf_type.offset)
            return int(count) * self.type_size(element, _depth + 1)
        raise BtfError(f"type {type_id} (kind {btf_type.kind}) has no size")

    def member(self, struct_name: str, path: str) -> tuple[int, int]:
        """Byte offset and type id of ``path`` in ``struct_name``."""
        type_id = self.struct_id(struct_name)
        total_bits = 0
        for part in path.split("."):
            found = self._find_member(type_id, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path}")
            bits, member = found
            if member.bitfield_size:
                raise BtfError(f"{struct_name}.{path} is a bitfield")
            total_bits += bits
            type_id = self.resolve(member.type_id)
        if total_bits % 8:
            raise BtfError(f"{struct_name}.{path} is not byte aligned")
        return total_bits // 8, type_id

    def _find_member(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """Find ``name`` in a struct/union, looking inside anonymous members too."""
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member
        for member in self.members(type_id):
            if member.name:
                continue
            inner = self.resolve(member.type_id)
            inner_type = self._types[inner]
            if inner_type is not None and inner_type.kind in (KIND_STRUCT, KIND_UNION):
                found = self._find_member(inner, name)
                if found is not None:
                    return member.bit_offset + found[0], found[1]
        return None


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset : end if end >= 0 else len(strings)].decode("utf-8", "replace")


def _parse_types(type_data: bytes, strings: bytes) -> list[BtfType | None]:
    types: list[BtfType | None] = [None]  # type id 0 is void
    position = 0
    end = len(type_data)
    unpack = struct.unpack_from
    while position < end:
        if position + 12 > end:
            raise BtfError("truncated BTF type")
        name_off, info, size_or_type = unpack("<III", type_data, position)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        fixed, per_item = _TRAILER.get(kind, (0, 0))
        if kind == 0 or kind > KIND_ENUM64:
            raise BtfError(f"unknown BTF kind {kind}")
        name = _string(strings, name_off) if kind in (KIND_STRUCT, KIND_UNION) else ""
        types.append(BtfType(kind, name, size_or_type, vlen, bool(info >> 31), position + 12))
        position += 12 + fixed + per_item * vlen
    return types
