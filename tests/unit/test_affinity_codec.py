"""The load-affinity codec and key digest (spec/load-affinity.md sections 4 and 4.1)."""

import hashlib

import pytest

from sipstatus.affinity import (
    MAX_BODY_OCTETS,
    MAX_KEYS,
    AffinityBody,
    Kind,
    affinity_key,
    decode,
    encode,
    full_pages,
)
from sipstatus.codec import StatusError


def test_a_key_is_the_first_16_hex_digits_of_sha256_of_the_key_string():
    assert affinity_key("1000") == "40510175845988f1"
    assert affinity_key("tenant-a/1000") == hashlib.sha256(b"tenant-a/1000").hexdigest()[:16]


def test_tenants_reusing_a_room_number_get_different_keys():
    assert affinity_key("tenant-a/1000") != affinity_key("tenant-b/1000")


def test_an_empty_key_string_is_refused():
    with pytest.raises(ValueError, match="empty"):
        affinity_key("")


def test_a_full_page_survives_encode_and_decode():
    page = AffinityBody("ast1", "k3J9xQ2m", 7, 900, Kind.FULL, keys=(affinity_key("1"),), page=1, pages=1)
    assert decode(encode(page)) == page


def test_a_delta_survives_encode_and_decode_with_del_on_the_wire():
    delta = AffinityBody("ast1", "k3J9xQ2m", 8, 900, Kind.DELTA, base=7, add=(affinity_key("2"),),
                         remove=(affinity_key("1"),))
    data = encode(delta)
    assert b'"del":["' in data
    assert decode(data) == delta


def test_500_rooms_make_17_pages_each_under_the_body_limit():
    keys = [affinity_key(str(room)) for room in range(500)]
    pages = full_pages("ast1.example.com", "k3J9xQ2m", 3, 900, keys)
    assert len(pages) == 17
    assert [p.page for p in pages] == list(range(1, 18)) and {p.pages for p in pages} == {17}
    assert all(len(encode(p)) <= MAX_BODY_OCTETS for p in pages)
    assert sorted(k for p in pages for k in p.keys) == sorted(keys)


def test_an_empty_set_is_one_page_without_keys():
    (page,) = full_pages("ast1", "k3J9xQ2m", 0, 900, [])
    assert (page.page, page.pages, page.keys) == (1, 1, ())


def test_the_longest_body_the_ranges_allow_fits_the_limit():
    keys = tuple(affinity_key(str(i)) for i in range(MAX_KEYS))
    worst = AffinityBody("a" * 64, "b" * 16, 2**53 - 1, 86400, Kind.DELTA, base=2**53 - 2, add=keys)
    assert len(encode(worst)) <= MAX_BODY_OCTETS


def test_a_sender_cannot_encode_more_keys_than_a_body_holds():
    keys = tuple(affinity_key(str(i)) for i in range(MAX_KEYS + 1))
    with pytest.raises(StatusError) as err:
        encode(AffinityBody("ast1", "k3J9xQ2m", 1, 900, Kind.FULL, keys=keys))
    assert (err.value.member, err.value.rule) == ("keys", "maxItems")


def test_the_reason_phrase_names_member_and_rule():
    with pytest.raises(StatusError) as err:
        decode(b'{"version":1,"node":"ast1","instance":"x","seq":1,"validity":9,"kind":"delta","base":1,"add":[],"del":[]}')
    assert "base" in str(err.value) and err.value.rule == "maximum"
