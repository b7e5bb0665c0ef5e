"""The column operations the maps are built with, against their plain Python meaning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from replay.views import columns

VALUES = st.one_of(st.none(), st.integers(-3, 3))
TEXTS = st.one_of(st.none(), st.text(alphabet="ab#é0", max_size=3))


KINDS = [(VALUES, pa.int64()), (TEXTS, pa.string())]


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[pa.DataType], list[tuple[object, ...]]]:
    """Rows of one to three columns, of numbers or texts (with nulls), and their types."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    rows = draw(st.lists(st.tuples(*(values for values, _ in kinds)), max_size=40))
    return [kind for _, kind in kinds], rows


@given(tables())
def test_first_seen_numbers_distinct_rows_in_the_order_first_seen(
    table: tuple[list[pa.DataType], list[tuple[object, ...]]],
) -> None:
    types, rows = table
    keys = [columns.codes(pa.array([row[i] for row in rows], kind)) for i, kind in enumerate(types)]
    first, number = columns.first_seen(keys)
    seen: dict[tuple[object, ...], int] = {}
    for index, row in enumerate(rows):
        seen.setdefault(row, index)
    assert first.tolist() == list(seen.values())
    assert number.tolist() == [list(seen).index(row) for row in rows]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=40))
def test_sorted_by_orders_by_the_first_then_the_second(pairs: list[tuple[int, int]]) -> None:
    first = np.array([a for a, _ in pairs], np.int64)
    then = np.array([b for _, b in pairs], np.int64)
    order = columns.sorted_by(first, then)
    assert [pairs[i] for i in order.tolist()] == sorted(pairs)


@given(st.lists(st.integers(0, 3), max_size=40))
def test_runs_of_equal_values(values: list[int]) -> None:
    ordered = sorted(values)
    starts, ends = columns.runs(np.array(ordered, np.int64))
    assert [ordered[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)] == [
        [value] * ordered.count(value) for value in sorted(set(ordered))
    ]


@given(st.lists(st.text(alphabet="ab#é0\U0001f600", max_size=4), unique=True, max_size=30))
def test_text_order_is_pythons(texts: list[str]) -> None:
    place = columns.text_order(pa.array(texts, pa.string()))
    assert [texts[i] for i in np.argsort(place).tolist()] == sorted(texts)


def test_present_is_pythons_truth() -> None:
    values = ["a", "", None]
    assert columns.present(pa.array(values)).tolist() == [bool(v) for v in values]
