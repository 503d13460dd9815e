"""Word splitting for hierarchical byte models: exact round trips on any bytes, the rule's cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensurgery.byte_models.trainable.splitter import split_fixed, split_whitespace, split_words

ANY_BYTES = st.binary(max_size=200)
ANY_TEXT = st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass"))
INPUTS = st.one_of(ANY_BYTES, ANY_TEXT)


@settings(max_examples=400, deadline=None)
@given(data=INPUTS, max_bytes=st.integers(1, 24))
def test_words_round_trip_and_length_limit(data, max_bytes):
    pieces = split_words(data, max_bytes)
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= max_bytes for p in pieces)


@settings(max_examples=300, deadline=None)
@given(data=INPUTS, size=st.integers(1, 9))
def test_whitespace_and_fixed_round_trip(data, size):
    assert b"".join(split_whitespace(data)) == data
    assert b"".join(split_whitespace(data, size)) == data and all(len(p) <= size for p in split_whitespace(data, size))
    patches = split_fixed(data, size)
    assert b"".join(patches) == data and all(len(p) == size for p in patches[:-1])


@pytest.mark.parametrize("text, expected", [
    ("Hello, world!", ["Hello", ",", " world", "!"]),
    ("  two spaces", [" ", " two", " spaces"]),
    ("don't stop", ["don't", " stop"]),
    ("Größe 12.5%", ["Größe", " 12", ".", "5", "%"]),
    ("漢字 かな", ["漢", "字", " か", "な"]),
    ("line\n\nnext", ["line", "\n\n", "next"]),
    ("a\n  b", ["a", "\n ", " b"]),
    ("def f(x):", ["def", " f", "(", "x", ")", ":"]),
    ("trailing  ", ["trailing", "  "]),
])
def test_the_rule(text, expected):
    assert split_words(text.encode()) == [e.encode() for e in expected]


def test_long_words_are_chopped_between_characters():
    assert split_words(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]
    assert split_words("ääää".encode(), 3) == ["ä".encode()] * 4  # 2-byte characters are never cut at 3
    assert split_words("😀".encode(), 2) == [b"\xf0\x9f", b"\x98\x80"]  # a character over the limit is


def test_invalid_utf8_bytes_are_pieces_of_their_own():
    assert split_words(b"ab\xffcd \xc3") == [b"ab", b"\xff", b"cd", b" ", b"\xc3"]


def test_bad_sizes():
    with pytest.raises(ValueError):
        split_words(b"x", 0)
    with pytest.raises(ValueError):
        split_fixed(b"x", 0)
