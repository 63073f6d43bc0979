"""Digest authentication (RFC 7616, RFC 8760) for SIP."""

from __future__ import annotations

import hashlib
import random

import pytest

from sipstatus.sip import Request, SipError, error_response
from sipstatus.sip.digest import (
    Challenge,
    DigestClient,
    DigestServer,
    digest_response,
    parse_auth,
)

# RFC 7616 section 3.9.1 (password with a lower-case "of", erratum 4495).
RFC = {
    "username": "Mufasa", "password": "Circle of Life", "realm": "http-auth@example.org",
    "method": "GET", "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "nc": "00000001", "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "qop": "auth",
}
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
RFC_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

USERS = {"agent": "s3cret"}


def publish(cseq: int = 1) -> Request:
    return Request("PUBLISH", "sip:proxy@192.0.2.10", [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKpub1"),
        ("From", "<sip:agent@192.0.2.1>;tag=a1"),
        ("To", "<sip:agent@192.0.2.1>"),
        ("Call-ID", "pub-1"),
        ("CSeq", f"{cseq} PUBLISH"),
        ("Event", "load-status"),
    ], b"{}")


def server(**kwargs) -> DigestServer:
    return DigestServer("sipstatus", b"k" * 32, random=random.Random(3).randbytes, **kwargs)


def client() -> DigestClient:
    return DigestClient("agent", "s3cret", random=random.Random(4).randbytes)


def challenged(srv: DigestServer, request: Request, now: float):
    with pytest.raises(SipError) as info:
        srv.verify(request, now, USERS.get)
    return error_response(request, info.value)


def signed_request(srv: DigestServer, cl: DigestClient, now: float = 0.0) -> Request:
    request = publish()
    retry = cl.authorize(request, challenged(srv, request, now))
    assert retry is not None
    return retry


# -- RFC 7616 section 3.9.1 ----------------------------------------------------------------


def test_md5_response_matches_rfc7616_example():
    assert digest_response(algorithm="MD5", **RFC) == RFC_MD5_RESPONSE


def test_sha256_response_matches_rfc7616_example():
    assert digest_response(algorithm="SHA-256", **RFC) == RFC_SHA256_RESPONSE


@pytest.mark.parametrize(("algorithm", "expected"),
                         [("MD5", RFC_MD5_RESPONSE), ("SHA-256", RFC_SHA256_RESPONSE)])
def test_client_credentials_reproduce_the_rfc7616_authorization(algorithm, expected):
    challenge = Challenge.parse(
        f'Digest realm="{RFC["realm"]}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC["nonce"]}", opaque="{RFC_OPAQUE}"')
    cl = DigestClient(RFC["username"], RFC["password"])
    value = cl.credentials(Request("GET", RFC["uri"]), challenge, cnonce=RFC["cnonce"])
    scheme, params = parse_auth(value)
    assert scheme == "Digest"
    assert params["response"] == expected
    assert (params["nc"], params["qop"], params["opaque"]) == ("00000001", "auth", RFC_OPAQUE)


def test_response_without_qop_is_the_rfc2069_form():
    h = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = h("u:r:p"), h("OPTIONS:sip:x@y")
    assert digest_response(algorithm="MD5", username="u", realm="r", password="p",
                           method="OPTIONS", uri="sip:x@y", nonce="n") == h(f"{ha1}:n:{ha2}")


def test_sess_variant_folds_nonce_and_cnonce_into_ha1():
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    ha1 = h(f"{h('u:r:p')}:n:c")
    expected = h(f"{ha1}:n:00000001:c:auth:{h('PUBLISH:sip:x@y')}")
    assert digest_response(algorithm="SHA-256-sess", username="u", realm="r", password="p",
                           method="PUBLISH", uri="sip:x@y", nonce="n", nc="00000001",
                           cnonce="c", qop="auth") == expected


# -- client ------------------------------------------------------------------------------


def test_client_retry_has_credentials_a_new_cseq_and_no_branch():
    srv, request = server(), publish(cseq=5)
    retry = client().authorize(request, challenged(srv, request, 0.0))
    assert retry.cseq.number == 6
    assert retry.top_via.branch is None
    assert parse_auth(retry.header("Authorization"))[1]["username"] == "agent"
    assert request.header("Authorization") is None  # the original is untouched


def test_client_uses_the_topmost_supported_challenge():
    srv = server(algorithms=("SHA-256", "MD5"))
    retry = signed_request(srv, client())
    assert parse_auth(retry.header("Authorization"))[1]["algorithm"] == "SHA-256"


def test_client_skips_a_challenge_with_an_unknown_algorithm():
    request = publish()
    response = error_response(request, SipError(401, "auth", [
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", algorithm=SHA-512-256, qop="auth"'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"'),
    ]))
    retry = client().authorize(request, response)
    assert parse_auth(retry.header("Authorization"))[1]["algorithm"] == "MD5"


def test_client_gives_up_without_a_supported_challenge():
    request = publish()
    response = error_response(request, SipError(401, "auth", [
        ("WWW-Authenticate", 'NoOneKnowsThisScheme realm="r"')]))
    assert client().authorize(request, response) is None


def test_client_answers_a_407_with_proxy_authorization():
    srv, request = server(proxy=True), publish()
    response = challenged(srv, request, 0.0)
    assert response.status == 407
    retry = client().authorize(request, response)
    assert retry.header("Proxy-Authorization") is not None
    assert retry.header("Authorization") is None


def test_client_gives_up_when_its_credentials_are_challenged_again():
    srv, cl = server(), client()
    retry = signed_request(srv, cl)
    second = error_response(retry, SipError(401, "again", srv.challenge(1.0)))
    assert cl.authorize(retry, second) is None


def test_client_gives_up_on_the_same_nonce_even_if_stale():
    srv, cl = server(), client()
    retry = signed_request(srv, cl)
    nonce = parse_auth(retry.header("Authorization"))[1]["nonce"]
    stale = error_response(retry, SipError(401, "stale", [
        ("WWW-Authenticate", f'Digest realm="sipstatus", nonce="{nonce}", qop="auth", '
                             'algorithm=SHA-256, stale=true')]))
    assert cl.authorize(retry, stale) is None


def test_client_answers_stale_true_with_the_new_nonce():
    srv, cl = server(), client()
    retry = signed_request(srv, cl)
    stale = error_response(retry, SipError(401, "stale", srv.challenge(400.0, stale=True)))
    again = cl.authorize(retry, stale)
    assert again is not None and len(again.header_all("Authorization")) == 1
    assert srv.verify(again, 400.0, USERS.get) == "agent"


def test_client_nonce_count_increments_per_nonce():
    cl = client()
    challenge = Challenge("r", "n", "MD5", ("auth",))
    counts = [parse_auth(cl.credentials(publish(), challenge))[1]["nc"] for _ in range(3)]
    assert counts == ["00000001", "00000002", "00000003"]


# -- server ------------------------------------------------------------------------------


def test_server_challenges_a_request_without_credentials_once_per_algorithm():
    response = challenged(server(), publish(), 0.0)
    assert response.status == 401
    algorithms = [Challenge.parse(v).algorithm for v in response.header_all("WWW-Authenticate")]
    assert algorithms == ["SHA-256", "MD5"]


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_server_accepts_correct_credentials(algorithm):
    srv = server(algorithms=(algorithm,))
    assert srv.verify(signed_request(srv, client()), 1.0, USERS.get) == "agent"


def test_server_refuses_a_wrong_password_without_stale():
    srv = server()
    retry = signed_request(srv, DigestClient("agent", "wrong"))
    with pytest.raises(SipError) as info:
        srv.verify(retry, 1.0, USERS.get)
    assert info.value.status == 401
    assert not Challenge.parse(info.value.headers[0][1]).stale


def test_server_refuses_an_unknown_user():
    srv = server()
    retry = signed_request(srv, DigestClient("nobody", "s3cret"))
    with pytest.raises(SipError) as info:
        srv.verify(retry, 1.0, USERS.get)
    assert info.value.status == 401


def test_server_refuses_a_nonce_it_did_not_issue():
    other = DigestServer("sipstatus", b"another secret")
    retry = signed_request(other, client())
    with pytest.raises(SipError) as info:
        server().verify(retry, 1.0, USERS.get)
    assert info.value.status == 401 and "not issued here" in info.value.reason


def test_server_answers_an_expired_nonce_with_stale_true():
    srv = server(nonce_lifetime=300.0)
    retry = signed_request(srv, client(), now=0.0)
    with pytest.raises(SipError) as info:
        srv.verify(retry, 300.0, USERS.get)
    assert Challenge.parse(info.value.headers[0][1]).stale


def test_server_answers_a_replayed_nonce_count_with_stale_true():
    srv = server()
    retry = signed_request(srv, client())
    assert srv.verify(retry, 1.0, USERS.get) == "agent"
    with pytest.raises(SipError) as info:
        srv.verify(retry, 2.0, USERS.get)
    assert "replayed" in info.value.reason
    assert Challenge.parse(info.value.headers[0][1]).stale


def test_server_accepts_increasing_nonce_counts_on_one_nonce():
    srv, cl = server(), client()
    first = signed_request(srv, cl)
    srv.verify(first, 1.0, USERS.get)
    challenge = Challenge.parse(challenged(srv, publish(), 0.0).header("WWW-Authenticate"))
    nonce = parse_auth(first.header("Authorization"))[1]["nonce"]
    reuse = Challenge(challenge.realm, nonce, challenge.algorithm, ("auth",))
    second = publish(cseq=3)
    second.add_header("Authorization", cl.credentials(second, reuse))
    assert parse_auth(second.header("Authorization"))[1]["nc"] == "00000002"
    assert srv.verify(second, 2.0, USERS.get) == "agent"


def test_server_memory_is_bounded_and_forgotten_nonces_are_stale():
    srv = server(max_tracked_nonces=2)
    cl = client()
    requests = [signed_request(srv, cl, now=float(t)) for t in range(3)]
    for t, request in enumerate(requests):
        srv.verify(request, t + 0.5, USERS.get)
    assert len(srv._counts) == 2
    again = requests[0]  # its count history was evicted
    with pytest.raises(SipError) as info:
        srv.verify(again, 3.0, USERS.get)
    assert "no longer tracked" in info.value.reason


def test_server_rejects_credentials_for_another_uri():
    srv = server()
    retry = signed_request(srv, client())
    retry.uri = "sip:elsewhere@192.0.2.99"
    with pytest.raises(SipError) as info:
        srv.verify(retry, 1.0, USERS.get)
    assert info.value.status == 400


def test_server_requires_qop_auth():
    srv = server()
    request = publish()
    nonce = Challenge.parse(srv.challenge(0.0)[0][1]).nonce
    response = digest_response(algorithm="SHA-256", username="agent", realm="sipstatus",
                               password="s3cret", method="PUBLISH", uri=request.uri, nonce=nonce)
    request.add_header("Authorization", f'Digest username="agent", realm="sipstatus", '
                       f'nonce="{nonce}", uri="{request.uri}", response="{response}", '
                       'algorithm=SHA-256')
    with pytest.raises(SipError) as info:
        srv.verify(request, 1.0, USERS.get)
    assert info.value.status == 401 and "qop" in info.value.reason


def test_proxy_server_challenges_with_407_and_proxy_authenticate():
    with pytest.raises(SipError) as info:
        server(proxy=True).verify(publish(), 0.0, USERS.get)
    assert info.value.status == 407
    assert info.value.headers[0][0] == "Proxy-Authenticate"
