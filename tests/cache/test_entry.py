"""The entry envelope every tier stores: round trip, freshness, and what is not an entry."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.cache.base import Entry, fresh_value, pack_entry, unpack_entry
from surgeflow.cache.keys import validate_tags

tags = st.lists(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True), max_size=8, unique=True)


@given(
    value=st.binary(max_size=500),
    stored_at=st.floats(0, 2e9),
    ttl_s=st.floats(0.001, 1e6),
    stale_s=st.floats(0, 1e6),
    tags=tags,
)
def test_an_entry_round_trips(
    value: bytes, stored_at: float, ttl_s: float, stale_s: float, tags: list[str]
) -> None:
    raw = pack_entry(value, stored_at=stored_at, ttl_s=ttl_s, stale_s=stale_s, tags=tags)
    assert unpack_entry(raw) == Entry(stored_at, ttl_s, stale_s, tuple(tags), value)
    assert fresh_value(raw, stored_at) == value
    assert fresh_value(raw, stored_at + ttl_s + 1) is None


def test_expiry_and_death() -> None:
    entry = unpack_entry(pack_entry(b"v", stored_at=100.0, ttl_s=10.0, stale_s=5.0))
    assert entry is not None
    assert (entry.expires_at(), entry.dies_at()) == (110.0, 115.0)
    raw = pack_entry(b"v", stored_at=100.0, ttl_s=10.0, stale_s=5.0)
    assert fresh_value(raw, 109.9) == b"v"
    assert fresh_value(raw, 110.0) is None  # stale: not for the fast path


@given(st.binary(max_size=60))
def test_arbitrary_bytes_are_not_mistaken_for_an_entry(raw: bytes) -> None:
    if not raw.startswith(b"\xf5sf1"):
        assert unpack_entry(raw) is None
        assert fresh_value(raw, 0.0) is None


def test_json_values_and_truncated_entries_are_not_entries() -> None:
    assert unpack_entry(b'{"id": "x"}') is None
    assert unpack_entry(b"[1, 2.0, 3.0]") is None
    whole = pack_entry(b"value", stored_at=1.0, ttl_s=2.0, tags=("faq", "pricing"))
    assert unpack_entry(whole[:20]) is None  # cut inside the header
    assert unpack_entry(whole[:33]) is None  # cut inside the tags
    assert fresh_value(whole[:20], 1.0) is None


def test_tags_are_deduplicated_in_order() -> None:
    assert validate_tags(["faq", "pricing-v2", "faq"]) == ("faq", "pricing-v2")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["a b"], "invalid cache tag 'a b'"),
        ([""], "invalid cache tag ''"),
        (["x" * 65], "1 to 64"),
        ([f"t{i}" for i in range(9)], "at most 8 cache tags"),
    ],
)
def test_bad_tags_are_refused_saying_why(bad: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_tags(bad)
