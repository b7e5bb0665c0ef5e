"""Column operations the maps are built with (replay.views.topology): a map of a busy moment
reads tens of thousands of connections and has far fewer distinct sides and edges, so the
work per connection is done on whole columns, and Python code runs once per side or edge.

Values are compared as the table holds them: a null equals a null, and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

Codes = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]


def codes(values: pa.Array | pa.ChunkedArray) -> Codes:
    """Each value's code: equal values have equal codes (0, 1, ...), a null has -1."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return np.asarray(encoded.indices.fill_null(-1).to_numpy(), dtype=np.int64)


def present(values: pa.Array | pa.ChunkedArray) -> Flags:
    """Where a value is there and not empty (as Python's truth of a text or a number)."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        there = pc.and_(pc.is_valid(values), pc.not_equal(values, ""))
    else:
        there = pc.and_(pc.is_valid(values), pc.not_equal(values, 0))
    return flags(there)


def flags(values: pa.Array | pa.ChunkedArray) -> Flags:
    """A boolean column as an array of flags, a null as false."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)


def first_seen(keys: Sequence[Codes]) -> tuple[Codes, Codes]:
    """The distinct rows of the columns ``keys`` (codes, one array each, of one length), in
    the order they are first seen: the index of each one's first row, and for each row,
    the number of its distinct row."""
    length = len(keys[0]) if keys else 0
    if length == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # The columns as one number a row (several times faster to sort than rows of numbers),
    # numbered afresh whenever the next column could make it overflow.
    combined, bound = np.zeros(length, np.int64), 1
    for column in keys:
        span = int(column.max()) + 2  # codes from -1
        if bound * span >= 2**62:
            combined, bound = _renumbered(combined)
        combined, bound = combined * span + (column + 1), bound * span
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def _renumbered(values: Codes) -> tuple[Codes, int]:
    """``values`` numbered 0, 1, ... in their order, and how many distinct ones there are."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), len(distinct)


def sorted_by(first: Codes, then: Codes) -> Codes:
    """The order of the rows by ``first``, then by ``then`` (both numbers from 0): as one
    number a row, which sorts several times faster than the two as keys."""
    if len(first) == 0:
        return np.zeros(0, np.int64)
    if (int(first.max()) + 1) * (int(then.max()) + 1) >= 2**62:
        first, _ = _renumbered(first)
    return np.argsort(first * (int(then.max()) + 1) + then)


def runs(sorted_keys: Codes) -> tuple[Codes, Codes]:
    """Where each run of equal values of ``sorted_keys`` starts and ends (exclusive)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(sorted_keys)]
    return starts.astype(np.int64), ends.astype(np.int64)


def text_order(values: pa.Array | pa.ChunkedArray) -> Codes:
    """Each text's place in the sorted order of all (as Python sorts them: by code point)."""
    order = pc.sort_indices(values).to_numpy()
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    return place
