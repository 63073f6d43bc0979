"""What a watcher follows: agents, named by node or by their first report.

`--agent [NODE=]SIP-URI` and the `[agents]` table of the sidecar's
configuration become `Agent`s here; `misnamed` words what an operator reads
when an agent reports another node than it is followed as.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..codec import NODE_NAME
from ..sip.errors import SipError
from ..sip.uri import SipUri, parse_uri

#: The port an agent listens on when the URI does not say (packaging/agent.toml).
DEFAULT_AGENT_PORT = 5070


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent to subscribe to: the node it reports and its SIP URI.

    `node` None: the agent is named by its first valid report (`--agent
    sip:HOST:PORT`). A node given (`--agent ast1=sip:HOST:PORT`) is a
    check as well as a name: a report for another node on that subscription
    is not used (spec section 4.8 step 6), so that an agent configured with
    the wrong name cannot pass its load off as another node's.
    """

    node: str | None
    uri: str

    def __post_init__(self) -> None:
        uri = parse_agent_uri(self.uri)
        if self.node is not None and not NODE_NAME.fullmatch(self.node):
            raise ValueError(f"agent node {self.node!r}: must be 1 to 64 of A-Z a-z 0-9 . _ : - "
                             "(spec section 6.4), starting and ending with a letter or digit")
        object.__setattr__(self, "uri", str(uri))

    @property
    def key(self) -> str:
        """How the watcher knows it: the node, or the URI until it is named."""
        return self.node if self.node is not None else self.uri


def parse_agent_uri(text: str) -> SipUri:
    """A SIP URI of an agent, or ValueError naming what is wrong with it."""
    try:
        uri = parse_uri(text.strip())
    except SipError as err:
        raise ValueError(f"agent URI {text!r}: {err.reason}") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"agent URI {text!r}: must be a sip: or sips: URI")
    return uri


def parse_agent(text: str) -> Agent:
    """`SIP-URI` or `NODE=SIP-URI` (the `--agent` flag) as an Agent."""
    if re.match(r"(?i)\s*sips?:", text):
        return Agent(None, text.strip())  # named by its first report
    node, sep, uri = text.partition("=")
    if not sep or not node or not uri:
        raise ValueError(f"agent {text!r}: expected SIP-URI or NODE=SIP-URI, e.g. sip:192.0.2.21:5070 "
                         "or ast1=sip:192.0.2.21:5070")
    return Agent(node.strip(), uri.strip())


def misnamed(expected: str, reported: str, uri: str) -> str:
    """What an operator reads when the agent at `uri`, followed as node
    `expected`, reports node `reported`: both ways to fix it."""
    return (f"the agent calls itself {reported!r}, not {expected!r}: name it {reported} here "
            f"(--agent {reported}={uri}, or the URI alone), or set agent.node = \"{expected}\" "
            "in its agent.toml and reload it")
