"""The load-status codec: what encode() puts on the wire and what decode() accepts."""

import json

import pytest

from sipstatus.codec import MAX_BODY_OCTETS, StatusError, decode, encode
from sipstatus.status import Asterisk, Cpu, LoadStatus, Network, Quality, State, weight_hint


def status(**changes) -> LoadStatus:
    fields = dict(node="ast1.example.com", instance="run1", seq=7, validity=15,
                  state=State.ACTIVE, capacity=0.5)
    fields.update(changes)
    return LoadStatus(**fields)


def wire(s: LoadStatus) -> dict:
    return json.loads(encode(s))


def test_required_members_come_first_in_spec_order():
    assert list(wire(status())) == ["version", "node", "instance", "seq", "validity", "state", "capacity", "weight"]


def test_unknown_metrics_are_omitted_not_zero():
    body = wire(status(cpu=Cpu(usage=None, cores=4), asterisk=Asterisk()))
    assert body["cpu"] == {"cores": 4}
    assert "asterisk" not in body


def test_weight_is_derived_from_capacity_for_an_active_node():
    assert wire(status(capacity=0.625))["weight"] == 63
    assert wire(status(capacity=0.0))["weight"] == 0
    assert wire(status(capacity=1.0))["weight"] == 100


@pytest.mark.parametrize("state", [State.DRAINING, State.OVERLOADED, State.DOWN])
def test_weight_is_zero_for_a_node_that_takes_no_calls(state):
    assert wire(status(state=state, capacity=0.9))["weight"] == 0


def test_weight_hint_rounds_half_up():
    assert weight_hint(State.ACTIVE, 0.125) == 13
    assert weight_hint(State.ACTIVE, 0.124) == 12


def test_numbers_are_rounded_to_the_decimals_the_spec_gives():
    body = wire(status(capacity=0.123456, quality=Quality(mos=4.123456, jitter=3.14159, loss=0.0123456)))
    assert body["capacity"] == 0.1235
    assert body["quality"] == {"mos": 4.12, "loss": 0.0123, "jitter": 3.1}


def test_packet_and_bit_rates_are_whole_numbers():
    body = wire(status(network=Network(rx_pps=10.6, rx_bps=8000.4, errors=0.016)))
    assert body["network"] == {"rx_pps": 11, "rx_bps": 8000, "errors": 0.02}


def test_decode_reverses_encode():
    s = status(cpu=Cpu(usage=0.25, cores=8, steal=0.0, load=(1.0, 0.5, 0.25)), reason="ok", affinity=("conf-1",))
    assert decode(encode(s)) == s


def test_decode_accepts_text_as_well_as_bytes():
    assert decode(encode(status()).decode()) == status()


def test_encode_refuses_a_status_that_breaks_a_rule():
    with pytest.raises(StatusError) as err:
        encode(status(cpu=Cpu(usage=1.7)))
    assert (err.value.member, err.value.rule) == ("cpu.usage", "maximum")


def test_encode_refuses_a_reason_with_a_quote():
    with pytest.raises(StatusError) as err:
        encode(status(reason='cpu "hot"'))
    assert err.value.member == "reason"


def test_error_message_names_member_value_and_rule():
    with pytest.raises(StatusError) as err:
        decode(b'{"version":1,"node":"a","instance":"i","seq":1,"validity":15,'
               b'"state":"active","capacity":0.5,"weight":50,"quality":{"mos":7}}')
    assert str(err.value) == "quality.mos: 7 is above the maximum 4.5 (rule: maximum)"


def test_unknown_members_are_ignored_and_listed():
    body = json.loads(encode(status()))
    body["future"] = {"x": 1}
    body["cpu"] = {"usage": 0.5, "temperature": 71}
    decoded = decode(json.dumps(body))
    assert decoded.cpu == Cpu(usage=0.5)
    assert decoded.ignored == ("future", "cpu.temperature")


def test_a_body_over_the_size_bound_is_rejected_before_parsing():
    with pytest.raises(StatusError) as err:
        decode(b" " * (MAX_BODY_OCTETS + 1))
    assert err.value.rule == "maxLength"


def test_deep_nesting_is_a_status_error():
    with pytest.raises(StatusError):
        decode(b"[" * 1000 + b"]" * 1000)


def test_booleans_are_not_numbers():
    body = json.loads(encode(status()))
    body["seq"] = True
    with pytest.raises(StatusError) as err:
        decode(json.dumps(body))
    assert (err.value.member, err.value.rule) == ("seq", "type")


def test_node_accepts_names_and_addresses():
    for node in ["ast1", "ast-1.pool.example.com", "192.0.2.10", "2001:db8::10"]:
        assert decode(encode(status(node=node))).node == node


def test_version_written_with_a_fraction_breaks_rule_type():
    # Spec 6.1 (the codec read 1.0 as version 1, against the text).
    body = json.loads(encode(status()))
    body["version"] = 1.0
    with pytest.raises(StatusError) as err:
        decode(json.dumps(body))
    assert (err.value.member, err.value.rule) == ("version", "type")


def test_the_reason_phrase_of_a_400_names_member_and_rule_as_the_spec_says():
    with pytest.raises(StatusError) as err:
        decode(b'{"version":1,"node":"a","instance":"i","seq":1,"validity":15,'
               b'"state":"busy","capacity":0.5,"weight":50}')
    assert err.value.reason_phrase == "Invalid load-status body: state (enum)"
    with pytest.raises(StatusError) as err:
        decode(b"not json")
    assert err.value.reason_phrase == "Invalid load-status body: body (json)"
