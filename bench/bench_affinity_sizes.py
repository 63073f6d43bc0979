"""Message sizes of the load-affinity package for many rooms on one node.

For N rooms (default 500) on the node `ast1.example.com`, prints the body
and whole-message sizes of every page of a full set and of typical deltas
(one room starting, one ending, ten changes merged), in a NOTIFY and a
PUBLISH whose header fields are those of the status spec's section 12
examples (spec/vectors/sip/notify-active.sip, publish-modify.sip) with this
package's Event and Content-Type; and the worst case the ranges allow.
Writes the figures to bench/results/affinity_sizes.txt.

    python3 bench/bench_affinity_sizes.py [ROOMS]
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipstatus.affinity import (  # noqa: E402
    MAX_BODY_OCTETS,
    MAX_KEYS,
    MEDIA_TYPE,
    PACKAGE,
    AffinityBody,
    Kind,
    affinity_key,
    encode,
    full_pages,
)

SIP = ROOT / "spec" / "vectors" / "sip"
#: RFC 3261 section 18.1.1: larger requests may not use UDP when the path MTU is unknown.
UDP_LIMIT = 1300


def message(template: str, body: bytes) -> bytes:
    """The template's request line and header fields with this package's
    Event and Content-Type, the right Content-Length, and `body`."""
    head = (SIP / template).read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    lines = []
    for line in head.split("\r\n"):
        name = line.split(":", 1)[0].lower()
        if name == "event":
            line = f"Event: {PACKAGE}"
        elif name == "content-type":
            line = f"Content-Type: {MEDIA_TYPE}"
        elif name == "content-length":
            line = f"Content-Length: {len(body)}"
        elif name in ("from", "contact"):
            line = line.replace("load-status", PACKAGE)
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def main() -> None:
    rooms = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    node, instance, validity = "ast1.example.com", "k3J9xQ2mP0aa", 900
    keys = [affinity_key(f"tenant-{r % 7}/{1000 + r}") for r in range(rooms)]
    seq = 1234
    pages = full_pages(node, instance, seq, validity, keys)
    lines = [f"# load-affinity sizes, {rooms} rooms on {node} ({MAX_KEYS} keys a page at most, "
             f"body limit {MAX_BODY_OCTETS} octets, UDP limit {UDP_LIMIT} octets)"]
    bodies = [encode(p) for p in pages]
    notify = [len(message("notify-active.sip", b)) for b in bodies]
    publish = [len(message("publish-modify.sip", b)) for b in bodies]
    lines.append(f"full set: {len(pages)} pages, {sum(len(b) for b in bodies)} body octets in all; "
                 f"body {min(map(len, bodies))}..{max(map(len, bodies))} octets, "
                 f"NOTIFY {min(notify)}..{max(notify)}, PUBLISH {min(publish)}..{max(publish)}")
    deltas = {
        "one room starts": AffinityBody(node, instance, seq + 1, validity, Kind.DELTA, base=seq,
                                        add=(affinity_key("tenant-1/9001"),)),
        "one room ends": AffinityBody(node, instance, seq + 1, validity, Kind.DELTA, base=seq,
                                      remove=(keys[0],)),
        "ten changes merged": AffinityBody(node, instance, seq + 5, validity, Kind.DELTA, base=seq,
                                           add=tuple(affinity_key(f"new/{i}") for i in range(5)),
                                           remove=tuple(keys[:5])),
    }
    for name, delta in deltas.items():
        body = encode(delta)
        lines.append(f"delta, {name}: body {len(body)} octets, NOTIFY {len(message('notify-active.sip', body))}, "
                     f"PUBLISH {len(message('publish-modify.sip', body))}")
    worst = encode(AffinityBody("a" * 64, "b" * 16, 2**53 - 1, 86400, Kind.DELTA, base=2**53 - 2,
                                add=tuple(keys[:MAX_KEYS])))
    header = max(max(n - len(b) for n, b in zip(notify, bodies, strict=True)), max(n - len(b) for n, b in zip(publish, bodies, strict=True)))
    lines.append(f"header fields and request line: up to {header} octets here; the worst body the ranges allow: "
                 f"{len(worst)} octets, {len(worst) + header} octets with them (limit {UDP_LIMIT})")
    over = [n for n in notify + publish if n > UDP_LIMIT]
    lines.append("every message within one UDP datagram under RFC 3261 18.1.1: " + ("yes" if not over else f"NO ({over})"))
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "affinity_sizes.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
