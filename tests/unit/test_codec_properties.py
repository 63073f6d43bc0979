"""Properties of the codec over generated statuses and arbitrary bytes."""

import json
import math

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from sipstatus.codec import MAX_BODY_OCTETS, SECTIONS, StatusError, _LoadAverage, decode, encode
from sipstatus.status import LoadStatus, State
from tests.support import ROOT

SCHEMA = json.loads((ROOT / "spec" / "load-status.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

PRINTABLE_NO_QUOTE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')


def member_values(rule):
    if isinstance(rule, _LoadAverage):
        load = st.floats(0, 9999.99, allow_nan=False)
        return st.none() | st.tuples(load, load, load)
    if rule.integer:
        return st.none() | st.integers(int(rule.minimum), int(rule.maximum))
    return st.none() | st.floats(rule.minimum, rule.maximum, allow_nan=False)


def sections():
    return {
        name: st.none() | st.builds(model, **{m: member_values(r) for m, r in members.items()})
        for name, (model, members) in SECTIONS.items()
    }


statuses = st.builds(
    LoadStatus,
    node=st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?\Z"),
    instance=st.from_regex(r"\A[A-Za-z0-9._-]{1,16}\Z"),
    seq=st.integers(0, 2**53 - 1),
    validity=st.integers(1, 3600),
    state=st.sampled_from(State),
    capacity=st.floats(0, 1),
    time=st.none() | st.floats(0, 253402300799),
    reason=st.none() | st.text(PRINTABLE_NO_QUOTE, max_size=48),
    affinity=st.none() | st.lists(st.text(PRINTABLE_NO_QUOTE.replace(" ", ""), min_size=1, max_size=24),
                                  max_size=4, unique=True).map(tuple),
    **sections(),
)


@given(statuses)
@settings(max_examples=300)
def test_every_status_in_range_encodes_within_the_size_bound(s):
    assert len(encode(s)) <= MAX_BODY_OCTETS


@given(statuses)
@settings(max_examples=300)
def test_encoding_is_stable_under_a_round_trip(s):
    body = encode(s)
    again = decode(body)
    assert encode(again) == body


@given(statuses)
@settings(max_examples=300)
def test_a_round_trip_keeps_every_value_to_its_wire_precision(s):
    again = decode(encode(s))
    assert (again.node, again.instance, again.seq, again.state, again.validity) == (
        s.node, s.instance, s.seq, s.state, s.validity)
    assert math.isclose(again.capacity, s.capacity, abs_tol=0.00005)
    assert again.weight == s.weight or abs(again.weight - s.weight) <= 1
    for name, (_, members) in SECTIONS.items():
        before, after = getattr(s, name), getattr(again, name)
        if before is None:
            assert after is None
            continue
        for member in members:
            b = getattr(before, member)
            a = getattr(after, member) if after is not None else None
            assert (a is None) == (b is None), f"{name}.{member}"


@given(statuses)
@settings(max_examples=300)
def test_every_encoded_body_is_valid_under_the_schema(s):
    VALIDATOR.validate(json.loads(encode(s)))


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_decode_raises_only_status_error_for_arbitrary_bytes(data):
    try:
        decode(data)
    except StatusError:
        pass


# Numbers just inside and just outside the ranges of spec section 6.4.
boundaries = st.sampled_from([-1, -0.0001, 0, 0.0, 1, 1.00001, 4.5, 4.51, 100, 101, 3600, 3601,
                              4096, 4097, 60000, 60000.1, 999999, 1000000, 2**48, 2**53])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | boundaries
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@given(statuses, st.data())
@settings(max_examples=500)
def test_a_mutated_body_is_accepted_only_if_the_schema_accepts_it(s, data):
    body = json.loads(encode(s))
    path = data.draw(st.sampled_from(sorted(_paths(body))))
    _set(body, path, data.draw(json_values))
    text = json.dumps(body)
    try:
        decode(text)
    except StatusError as err:
        # The codec may be stricter than JSON Schema only by the rules the
        # schema cannot express (spec section 6): weight-hint, size, duplicates.
        if VALIDATOR.is_valid(body):
            assert err.rule in {"weight-hint", "maxLength"}, str(err)
    else:
        assert VALIDATOR.is_valid(body), text


def _paths(obj, prefix=()):
    for key, value in obj.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _paths(value, prefix + (key,))


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


BOUNDARY_VALUES = [-1, -0.0001, 0, 0.5, 1, 1.00001, 4.5, 4.51, 100, 101, 3600, 3601, 4096, 4097,
                   60000, 60000.1, 99999.99, 100000, 999999, 1000000, 2**48 - 1, 2**48,
                   2**53 - 1, 2**53, 1e9, 1e9 + 1, 1e12, 1e12 + 1, 253402300799, 253402300800]
def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


TYPICAL = json.loads((ROOT / "spec/vectors/body/valid-typical.json").read_text())
NUMERIC_PATHS = [p for p in _paths(TYPICAL) if isinstance(_get(TYPICAL, p), int | float)
                 and p not in {("version",), ("weight",)}] + [("cpu", "load", i) for i in range(3)]


def test_codec_and_schema_agree_on_every_range_boundary():
    disagreements = []
    for path in NUMERIC_PATHS:
        for value in BOUNDARY_VALUES:
            body = json.loads(json.dumps(TYPICAL))
            _set(body, path, value)
            if path == ("capacity",):
                body["weight"] = max(0, min(100, math.floor(100 * value + 0.5)))
            try:
                decode(json.dumps(body))
                accepted = True
            except StatusError:
                accepted = False
            if accepted != VALIDATOR.is_valid(body):
                disagreements.append((".".join(map(str, path)), value, accepted))
    assert disagreements == []
