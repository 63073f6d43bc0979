"""Password guessing is throttled per source (issue 17 item 5, spec 4.6.2),
and the configuration offers SHA-256 alone when asked: the sans-I/O parts."""

from __future__ import annotations

import pytest

from agent import config
from sipstatus.sip import SipError, parse_message
from sipstatus.sip.digest import DigestClient, DigestServer, FailedAttempts, WrongCredentials
from sipstatus.sip.message import error_response

SUBSCRIBE = (b"SUBSCRIBE sip:a@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa\r\n"
             b"Max-Forwards: 70\r\nFrom: <sip:w@192.0.2.9>;tag=1\r\nTo: <sip:a@192.0.2.1>\r\n"
             b"Call-ID: c1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@192.0.2.9>\r\n"
             b"Event: load-status\r\n\r\n")


def challenge_response(server: DigestServer):
    request = parse_message(SUBSCRIBE)
    try:
        server.verify(request, 0.0, lambda user: "s3cret")
    except SipError as error:
        return request, error_response(request, error)
    raise AssertionError("no challenge")


def test_a_wrong_password_is_wrong_credentials_with_a_new_challenge():
    server = DigestServer("agent", b"k" * 32)
    request, challenge = challenge_response(server)
    retry = DigestClient("proxy1", "guess").authorize(request, challenge)
    with pytest.raises(WrongCredentials) as info:
        server.verify(retry, 0.0, lambda user: "s3cret")
    assert info.value.status == 401 and info.value.headers


def test_missing_credentials_are_not_counted_as_wrong():
    server = DigestServer("agent", b"k" * 32)
    with pytest.raises(SipError) as info:
        server.verify(parse_message(SUBSCRIBE), 0.0, lambda user: "s3cret")
    assert not isinstance(info.value, WrongCredentials)


def test_a_source_is_blocked_after_the_limit_of_failures_for_the_lockout():
    failures = FailedAttempts(limit=3, window=60, lockout=30)
    for t in (0.0, 1.0):
        failures.failed("192.0.2.9", t)
        assert not failures.blocked("192.0.2.9", t)
    failures.failed("192.0.2.9", 2.0)
    assert failures.blocked("192.0.2.9", 2.0) and failures.blocked("192.0.2.9", 31.9)
    assert not failures.blocked("192.0.2.9", 32.0)
    assert not failures.blocked("192.0.2.10", 2.0)


def test_failures_spread_wider_than_the_window_do_not_block():
    failures = FailedAttempts(limit=3, window=10, lockout=30)
    for t in (0.0, 6.0, 12.0, 18.0):
        failures.failed("192.0.2.9", t)
    assert not failures.blocked("192.0.2.9", 18.0)


def test_a_success_forgets_the_failures_of_a_source():
    failures = FailedAttempts(limit=2, window=60, lockout=30)
    failures.failed("192.0.2.9", 0.0)
    failures.succeeded("192.0.2.9")
    failures.failed("192.0.2.9", 1.0)
    assert not failures.blocked("192.0.2.9", 1.0)


def test_a_limit_of_zero_never_blocks():
    failures = FailedAttempts(limit=0)
    for t in range(100):
        failures.failed("192.0.2.9", float(t))
    assert not failures.blocked("192.0.2.9", 100.0)


def test_the_sources_remembered_are_bounded():
    failures = FailedAttempts(limit=5, max_sources=100)
    for i in range(1000):
        failures.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(failures._sources) == 100


def test_a_sha256_only_server_challenges_once():
    server = DigestServer("agent", b"k" * 32, algorithms=["SHA-256"])
    (challenge,) = server.challenge(0.0)
    assert "algorithm=SHA-256" in challenge[1]


def test_configuration_offers_sha256_alone_when_asked(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[notifier]\ndigest_algorithms = ["SHA-256"]\n')
    assert config.load(path).notifier.digest_algorithms == ("SHA-256",)


def test_configuration_refuses_digest_without_sha256(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[notifier]\ndigest_algorithms = ["MD5"]\n')
    with pytest.raises(config.ConfigError, match=r"notifier.digest_algorithms: must offer SHA-256"):
        config.load(path)


def test_configuration_refuses_a_per_source_connection_cap_above_the_total(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("[notifier]\nmax_connections = 10\nmax_connections_per_source = 11\n")
    with pytest.raises(config.ConfigError, match=r"notifier.max_connections_per_source: must be at most"):
        config.load(path)
