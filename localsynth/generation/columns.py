"""Columns built through Arrow, both ways: Polars' conversion of nested Python values costs
~100x more than building the Arrow arrays (measured in bench/bench_pipeline.py), and Polars takes
an Arrow array zero-copy through the C data interface."""

from __future__ import annotations

import itertools

import polars as pl
import pyarrow as pa


def arrow(values, dtype: pl.DataType) -> pa.Array:
    """An Arrow array through Polars: `pa.array` on Python or NumPy data imports pandas (~0.3 s
    at the first call, measured), Polars' conversion does not."""
    return pl.Series(values, dtype=dtype).to_arrow()


class _ArrowArray:
    """An Arrow array seen only through the Arrow C data interface (`__arrow_c_array__`):
    Polars imports it zero-copy, where handing it a pyarrow array first imports
    pyarrow.compute (~50 ms, measured, on the first wave of a process)."""

    def __init__(self, array: pa.Array):
        self.array = array

    def __arrow_c_array__(self, requested_schema=None):
        return self.array.__arrow_c_array__(requested_schema)


def series(array: pa.Array | pa.ChunkedArray) -> pl.Series:
    """A Polars column from an Arrow array, through the C data interface."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pl.Series(_ArrowArray(array))


def _offsets(lists: list[list]) -> pa.Array:
    return arrow(list(itertools.accumulate((len(x) for x in lists), initial=0)), pl.Int64)


def string_lists(lists: list[list[str]]) -> pl.Series:
    """A List(Utf8) column built through Arrow."""
    flat = arrow([s for x in lists for s in x], pl.Utf8)
    return series(pa.LargeListArray.from_arrays(_offsets(lists), flat))


def message_lists(lists: list[list[dict[str, str]]]) -> pl.Series:
    """A List(Struct{role, content}) column built through Arrow."""
    roles = arrow([m["role"] for x in lists for m in x], pl.Utf8)
    contents = arrow([m["content"] for x in lists for m in x], pl.Utf8)
    structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return series(pa.LargeListArray.from_arrays(_offsets(lists), structs))
