"""sipstatus.configkit: the listen-address grammar the agent and the sidecar share."""

import pytest

from sipstatus.configkit import ListenError, parse_listen


@pytest.mark.parametrize("text, parsed", [
    ("udp:127.0.0.1:5080", ("UDP", "127.0.0.1", 5080)),
    ("TCP:0.0.0.0:5070", ("TCP", "0.0.0.0", 5070)),
    ("tls:[::1]:5071", ("TLS", "::1", 5071)),
    ("tcp:[fe80::1%eth0]:5070", ("TCP", "fe80::1%eth0", 5070)),
    ("udp:::1:5070", ("UDP", "::1", 5070)),  # unbracketed: the last colon ends the address
    (" udp:127.0.0.1:5080 ", ("UDP", "127.0.0.1", 5080)),
])
def test_a_listen_address_is_transport_ip_address_and_port(text, parsed):
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text, problem", [
    ("sctp:127.0.0.1:5080", "expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT"),
    ("udp:127.0.0.1", "expected udp:HOST:PORT"),
    ("udp:127.0.0.1:", "expected udp:HOST:PORT"),
    ("udp:127.0.0.1:\u0665\u0660\u0668\u0660", "expected udp:HOST:PORT"),  # digits, but not ASCII ones
    ("udp:127.0.0.1:65536", "port 65536 is not 1..65535"),
    ("udp:127.0.0.1:0", "port 0 is not 1..65535"),
    ("udp:localhost:5080", "'localhost' is not an IP address (listen on an address, not a name)"),
])
def test_a_wrong_listen_address_names_the_problem(text, problem):
    with pytest.raises(ListenError) as err:
        parse_listen(text)
    assert err.value.problem.startswith(problem) and err.value.address == text
    assert str(err.value).startswith(f"listen address {text!r}: {problem}")


def test_the_caller_chooses_the_transports_and_whether_port_0_means_any_free_port():
    assert parse_listen("udp:127.0.0.1:0", ("udp", "tcp"), port_zero=True) == ("UDP", "127.0.0.1", 0)
    with pytest.raises(ListenError, match="expected udp:HOST:PORT or tcp:HOST:PORT "):
        parse_listen("tls:127.0.0.1:5061", ("udp", "tcp"))
