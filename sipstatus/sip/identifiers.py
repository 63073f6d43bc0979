"""Branch ids, tags and Call-IDs (RFC 3261 sections 8.1.1.4, 8.1.1.7, 19.3).

All three must be unique in space and time and hard to guess, so they come
from a random source; the source is injectable so tests are repeatable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# RFC 3261 section 8.1.1.7: branches of RFC 3261 elements start with this.
MAGIC_COOKIE = "z9hG4bK"
# 16 random octets: 128 bits, the "at least 32 bits" of section 19.3 and
# well beyond guessing.
ID_OCTETS = 16


class IdGenerator:
    """Makes branch ids, tags and Call-IDs from ``random(n) -> n bytes``."""

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random

    def _token(self) -> str:
        return self._random(ID_OCTETS).hex()

    def branch(self) -> str:
        """A new Via branch: the magic cookie and 128 random bits."""
        return MAGIC_COOKIE + self._token()

    def tag(self) -> str:
        """A new From or To tag (section 19.3)."""
        return self._token()[:16]

    def call_id(self, host: str | None = None) -> str:
        """A new Call-ID, ``random@host`` when a host is given (section 8.1.1.4)."""
        token = self._token()
        return f"{token}@{host}" if host else token
