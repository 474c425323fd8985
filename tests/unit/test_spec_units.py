"""Sizes as people write them (testbed.spec.units)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.spec.units import MiB, format_size, is_power_of_two, parse_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text, value", [
    (0, 0),
    (512, 512),
    ("512", 512),
    ("4k", 4 * K),
    ("4K", 4 * K),
    ("4KB", 4 * K),
    ("4KiB", 4 * K),
    ("64M", 64 * M),
    ("64m", 64 * M),
    ("64MB", 64 * M),
    ("64MiB", 64 * M),
    ("64 M", 64 * M),
    (" 64M ", 64 * M),
    ("1G", G),
    ("1GiB", G),
    ("2T", 2 * T),
    ("0M", 0),
    ("1B", 1),
    (1 << 40, T),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad, reason", [
    ("64Q", "expected a size such as 64M or 1G, got '64Q'"),
    ("1.5G", "got '1.5G'"),
    ("", "got ''"),
    ("M", "got 'M'"),
    ("64 MB extra", "got '64 MB extra'"),
    ("0x40M", "got '0x40M'"),
    ("-1G", "a size cannot be negative, got '-1G'"),
    (-1, "a size cannot be negative"),
    (True, "got a boolean"),
    (False, "got a boolean"),
    (None, "got NoneType"),
    (1.5, "got float"),
    ([64], "got list"),
    ({"size": 1}, "got dict"),
])
def test_parse_size_rejects(bad, reason):
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    assert reason in str(info.value)


@pytest.mark.parametrize("n, text", [
    (0, "0"), (1, "1"), (1000, "1000"), (4096, "4K"), (MiB, "1M"), (3 * MiB, "3M"),
    (1536 * MiB, "1536M"), (G, "1G"), (4 * G, "4G"), (T, "1T"), (MiB + 1, "1048577"),
])
def test_format_size(n, text):
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_then_parse_round_trips(n):
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["", "K", "M", "G", "T"]),
       st.sampled_from(["", "B", "iB"]), st.booleans())
@settings(max_examples=200)
def test_parse_size_suffixes(n, unit, tail, lower):
    text = f"{n}{unit}{tail if unit or tail == 'B' else ''}"
    if lower:
        text = text.lower()
    scale = {"": 1, "K": K, "M": M, "G": G, "T": T}[unit]
    assert parse_size(text) == n * scale


@pytest.mark.parametrize("n, yes", [(0, False), (1, True), (2, True), (3, False), (4096, True),
                                    (24 * MiB, False), (32 * MiB, True), (-4, False)])
def test_is_power_of_two(n, yes):
    assert is_power_of_two(n) is yes
