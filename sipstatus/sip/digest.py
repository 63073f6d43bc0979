"""Digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760).

Algorithms MD5 and SHA-256 (and their ``-sess`` variants), ``qop=auth``.

Client: :class:`DigestClient` turns a 401/407 and the request it answers
into the next request with credentials, and gives up instead of looping when
the same realm rejects credentials again without ``stale=true``.

Server: :class:`DigestServer` issues challenges whose nonce is an HMAC of
the issue time, so it recognises its own nonces without storing them; it
verifies credentials, answers ``stale=true`` for nonces that are too old or
for replayed nonce counts, and remembers the highest nonce count per nonce
in bounded memory.  Failures are :class:`SipError` (401 or 407) carrying the
challenge headers, ready for ``error_response``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import SipError, bad_request
from .headers import Via, quote, split_list, split_outside, unquote
from .message import Request, Response

# RFC 7616 section 6.1 (MD5, SHA-256) and RFC 8760 section 2.2; ordered by
# preference, strongest first, which is also the order challenges are sent
# in (RFC 8760 section 2.4).
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
}
# How long a nonce stays fresh.  Kamailio's auth module defaults to 300 s
# (nonce_expire); a refresh of a 600 s subscription then meets a fresh
# challenge at most once per refresh.
NONCE_LIFETIME = 300.0
# Nonces whose counts are remembered for replay detection.  Each entry is
# ~100 bytes; 4096 is well over the nonces one node issues in a lifetime.
NONCE_TRACKING_LIMIT = 4096
# Nonces whose counts the client remembers (one per realm in practice).
CLIENT_NONCE_LIMIT = 64
# Failed attempts (a wrong password or an unknown user) from one source
# before it is refused outright for a while (spec 4.6.2 allows 403 then):
# fail2ban's default is 5 in 10 minutes; Asterisk has no such limit.
FAILURE_LIMIT = 5
FAILURE_WINDOW = 600.0
FAILURE_LOCKOUT = 60.0
FAILURE_SOURCES_TRACKED = 4096


def _hash(algorithm: str) -> Callable[[bytes], str]:
    base = algorithm.upper().removesuffix("-SESS")
    function = ALGORITHMS.get(base)
    if function is None:
        raise bad_request(f"digest algorithm {algorithm!r} not supported")
    return function


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 sections 3.4.1-3.4.3; qop auth or none)."""
    h = _hash(algorithm)
    ha1 = h(_text(f"{username}:{realm}:{password}"))
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(_text(f"{ha1}:{nonce}:{cnonce}"))
    ha2 = h(_text(f"{method}:{uri}"))
    if qop:
        return h(_text(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
    return h(_text(f"{ha1}:{nonce}:{ha2}"))  # RFC 2069 compatibility


# -- header values ----------------------------------------------------------------


def parse_auth(value: str) -> tuple[str, dict[str, str]]:
    """``Digest k=v, k="v"`` -> (scheme, params); names lower-cased, values unquoted."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for item in split_outside(rest, ","):
        if not item.strip():
            continue
        name, eq, raw = item.partition("=")
        name, raw = name.strip().lower(), raw.strip()
        if not eq or not name:
            raise bad_request(f"bad auth parameter {item.strip()!r}")
        params[name] = unquote(raw) if raw.startswith('"') else raw
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """One Digest challenge from WWW-Authenticate or Proxy-Authenticate."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False

    @classmethod
    def parse(cls, value: str, *, proxy: bool = False) -> Challenge | None:
        """The Digest challenge in ``value``, None for another scheme."""
        scheme, p = parse_auth(value)
        if scheme.lower() != "digest":
            return None
        if "realm" not in p or "nonce" not in p:
            raise bad_request("Digest challenge without realm or nonce")
        qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
        return cls(p["realm"], p["nonce"], p.get("algorithm", "MD5"), qop, p.get("opaque"),
                   p.get("stale", "").lower() == "true", proxy)


def challenges_of(response: Response) -> list[Challenge]:
    """The Digest challenges of a 401 or 407, in header order."""
    out: list[Challenge] = []
    for name, proxy in (("WWW-Authenticate", False), ("Proxy-Authenticate", True)):
        for value in response.header_all(name):
            challenge = Challenge.parse(value, proxy=proxy)
            if challenge is not None:
                out.append(challenge)
    return out


# -- client ----------------------------------------------------------------------


class DigestClient:
    """Answers Digest challenges for one username and password.

    ``random(n)`` supplies cnonces (injectable for tests).
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.username = username
        self.password = password
        self._random = random
        self._counts: OrderedDict[str, int] = OrderedDict()

    def _next_count(self, nonce: str) -> int:
        count = self._counts.pop(nonce, 0) + 1
        self._counts[nonce] = count
        while len(self._counts) > CLIENT_NONCE_LIMIT:
            self._counts.popitem(last=False)
        return count

    def credentials(self, request: Request, challenge: Challenge,
                    cnonce: str | None = None) -> str:
        """The Authorization value answering ``challenge`` for ``request``."""
        qop = "auth" if "auth" in challenge.qop else None
        if challenge.qop and qop is None:
            raise bad_request("only qop=auth is supported")
        nc = cnonce_value = None
        if qop:
            nc = f"{self._next_count(challenge.nonce):08x}"
            cnonce_value = cnonce or self._random(16).hex()
        response = digest_response(
            algorithm=challenge.algorithm, username=self.username, realm=challenge.realm,
            password=self.password, method=request.method, uri=request.uri,
            nonce=challenge.nonce, nc=nc, cnonce=cnonce_value, qop=qop,
        )
        parts = [
            f"username={quote(self.username)}", f"realm={quote(challenge.realm)}",
            f"nonce={quote(challenge.nonce)}", f"uri={quote(request.uri)}",
            f"response={quote(response)}", f"algorithm={challenge.algorithm}",
        ]
        if challenge.opaque is not None:
            parts.append(f"opaque={quote(challenge.opaque)}")
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f"cnonce={quote(cnonce_value or '')}"]
        return "Digest " + ", ".join(parts)

    def authorize(self, request: Request, response: Response) -> Request | None:
        """The request to send after ``response`` (401/407), or None to give up.

        Section 22.2: the new request has credentials for each challenged
        realm, CSeq incremented and no Via branch (it is a new transaction:
        the transaction layer adds a fresh branch).  A realm that the request
        already answered is given up on unless the challenge says
        ``stale=true`` with a nonce not yet tried (RFC 7616 section 3.3).
        """
        if response.status not in (401, 407):
            return None
        chosen: dict[tuple[str, bool], Challenge] = {}
        for challenge in challenges_of(response):
            key = (challenge.realm, challenge.proxy)
            supported = challenge.algorithm.upper().removesuffix("-SESS") in ALGORITHMS
            # RFC 8760 section 2.4: the topmost challenge the UAC supports.
            if key not in chosen and supported and (not challenge.qop or "auth" in challenge.qop):
                chosen[key] = challenge
        if not chosen:
            return None
        retry = copy.deepcopy(request)
        for (realm, proxy), challenge in chosen.items():
            name = "Proxy-Authorization" if proxy else "Authorization"
            previous = _credentials_for(retry, name, realm)
            if previous is not None:
                if not challenge.stale or previous.get("nonce") == challenge.nonce:
                    return None  # these credentials were refused
            _remove_credentials(retry, name, realm)
            retry.add_header(name, self.credentials(retry, challenge))
        cseq = retry.cseq
        assert cseq is not None
        retry.set_header("CSeq", f"{cseq.number + 1} {cseq.method}")
        _drop_top_branch(retry)
        return retry


def _credentials_for(request: Request, name: str, realm: str) -> dict[str, str] | None:
    for value in request.header_all(name):
        scheme, params = parse_auth(value)
        if scheme.lower() == "digest" and params.get("realm") == realm:
            return params
    return None


def _remove_credentials(request: Request, name: str, realm: str) -> None:
    keep = []
    for header in request.headers:
        if header[0] == name:
            scheme, params = parse_auth(header[1])
            if scheme.lower() == "digest" and params.get("realm") == realm:
                continue
        keep.append(header)
    request.headers[:] = keep


def _drop_top_branch(request: Request) -> None:
    via = request.top_via
    if via is None or via.branch is None:
        return
    params = {k: v for k, v in via.params.items() if k != "branch"}
    for i, (name, value) in enumerate(request.headers):
        if name == "Via":
            rest = split_list(value, "Via")[1:]
            request.headers[i] = ("Via", ", ".join([str(Via(via.transport, via.host,
                                                              via.port, params)), *rest]))
            return


# -- server ----------------------------------------------------------------------


class WrongCredentials(SipError):
    """Credentials for our realm and nonce whose digest is wrong, or of an
    unknown user: what a password guesser gets (401/407 with a challenge)."""


class FailedAttempts:
    """Throttles password guessing per source (sans-I/O: the caller gives the time).

    After ``limit`` wrong credentials from one source within ``window``
    seconds, :meth:`blocked` says so for ``lockout`` seconds; a success
    forgets that source's failures.  At most ``max_sources`` sources are
    remembered (the oldest forgotten first), so a flood of sources costs
    bounded memory.  ``limit`` 0 turns it off.
    """

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 lockout: float = FAILURE_LOCKOUT,
                 max_sources: int = FAILURE_SOURCES_TRACKED) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_sources = max_sources
        # source -> (failures, first failure of the window, blocked until)
        self._sources: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def blocked(self, source: str, now: float) -> bool:
        entry = self._sources.get(source)
        return entry is not None and now < entry[2]

    def failed(self, source: str, now: float) -> None:
        if self.limit <= 0:
            return
        count, since, until = self._sources.get(source, (0, now, -float("inf")))
        if now - since > self.window:
            count, since = 0, now
        count += 1
        if count >= self.limit:
            until, count, since = now + self.lockout, 0, now
        self._sources[source] = (count, since, until)
        self._sources.move_to_end(source)
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)

    def succeeded(self, source: str) -> None:
        self._sources.pop(source, None)


class DigestServer:
    """Challenges and verifies requests for one realm, keeping no per-challenge state.

    ``secret`` keys the nonce HMAC; ``random(n)`` salts nonces so that two
    challenges issued at the same instant differ.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = NONCE_LIFETIME,
        max_tracked_nonces: int = NONCE_TRACKING_LIMIT,
        proxy: bool = False,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.realm = realm
        self.algorithms = [a.upper() for a in algorithms]
        for algorithm in self.algorithms:
            _hash(algorithm)
        self.nonce_lifetime = nonce_lifetime
        self.max_tracked_nonces = max_tracked_nonces
        self.proxy = proxy
        self._secret = secret
        self._random = random
        # nonce -> (issue time, highest nonce count seen), least recently used first
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._forgotten_until = float("-inf")

    @property
    def status(self) -> int:
        return 407 if self.proxy else 401

    @property
    def _challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def _credentials_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def _sign(self, stamp: str) -> str:
        mac = hmac.new(self._secret, _text(f"{stamp}:{self.realm}"), hashlib.sha256)
        return mac.hexdigest()[:32]

    def make_nonce(self, now: float) -> str:
        """``<ms hex>.<salt>.<hmac>``: its own issue time, signed."""
        stamp = f"{int(now * 1000):x}.{self._random(6).hex()}"
        return f"{stamp}.{self._sign(stamp)}"

    def _nonce_time(self, nonce: str) -> float | None:
        """The issue time of one of our nonces; None if it is not ours."""
        stamp, dot, mac = nonce.rpartition(".")
        # compare_digest refuses str with non-ASCII characters (TypeError):
        # compare the bytes, whatever the peer sent.
        if not dot or not hmac.compare_digest(_text(mac), _text(self._sign(stamp))):
            return None
        try:
            return int(stamp.partition(".")[0], 16) / 1000
        except ValueError:
            return None

    def challenge(self, now: float, *, stale: bool = False) -> list[tuple[str, str]]:
        """Challenge header fields, one per algorithm, strongest first."""
        nonce = self.make_nonce(now)
        extra = ", stale=true" if stale else ""
        return [
            (self._challenge_header,
             f'Digest realm={quote(self.realm)}, nonce="{nonce}", algorithm={algorithm}, '
             f'qop="auth"{extra}')
            for algorithm in self.algorithms
        ]

    def _refuse(self, why: str, now: float, *, stale: bool = False) -> SipError:
        return SipError(self.status, why, self.challenge(now, stale=stale))

    def _wrong(self, now: float) -> WrongCredentials:
        return WrongCredentials(self.status, "unknown user or wrong password", self.challenge(now))

    def verify(self, request: Request, now: float,
               password_for: Callable[[str], str | None]) -> str:
        """The authenticated username, or SipError (401/407 with a challenge, or 400)."""
        params = None
        for value in request.header_all(self._credentials_header):
            scheme, candidate = parse_auth(value)
            if scheme.lower() == "digest" and candidate.get("realm") == self.realm:
                params = candidate
                break
        if params is None:
            raise self._refuse("credentials required", now)
        for name in ("username", "nonce", "uri", "response"):
            if name not in params:
                raise bad_request(f"Digest credentials without {name}")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in self.algorithms:
            raise self._refuse(f"algorithm {algorithm} not offered", now)
        if params["uri"] != request.uri:
            raise bad_request("Digest uri differs from the Request-URI")
        qop = params.get("qop", "").lower()
        nc_text = params.get("nc", "")
        if qop != "auth" or not params.get("cnonce") or len(nc_text) != 8:
            raise self._refuse("qop=auth with nc and cnonce required", now)
        try:
            nc = int(nc_text, 16)
        except ValueError:
            raise bad_request("bad nonce count") from None
        nonce = params["nonce"]
        issued = self._nonce_time(nonce)
        if issued is None:
            raise self._refuse("nonce not issued here", now)
        password = password_for(params["username"])
        if password is None:
            raise self._wrong(now)
        expected = digest_response(
            algorithm=algorithm, username=params["username"], realm=self.realm,
            password=password, method=request.method, uri=params["uri"], nonce=nonce,
            nc=nc_text, cnonce=params["cnonce"], qop=qop,
        )
        if not hmac.compare_digest(_text(expected), _text(params["response"].lower())):
            raise self._wrong(now)
        # The digest is right: from here on a refusal says stale=true, so the
        # client retries with a fresh nonce without asking its user.
        if not issued <= now < issued + self.nonce_lifetime:
            raise self._refuse("nonce expired", now, stale=True)
        last = self._counts.get(nonce)
        if last is None and issued <= self._forgotten_until:
            # Its history was evicted: a replay could not be told apart.
            raise self._refuse("nonce no longer tracked", now, stale=True)
        if last is not None and nc <= last[1]:
            raise self._refuse("nonce count replayed", now, stale=True)
        self._counts[nonce] = (issued, nc)
        self._counts.move_to_end(nonce)
        while len(self._counts) > self.max_tracked_nonces:
            _, (evicted_issued, _) = self._counts.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, evicted_issued)
        return params["username"]
