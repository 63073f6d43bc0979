"""Parse and serialise rate of a typical load-status NOTIFY.

Run: python bench/bench_sip_parse.py [seconds-per-figure]
Prints the figures and writes them to bench/results/sip_parse.txt.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipstatus.sip import Request, SipError, parse_message  # noqa: E402


def typical_notify() -> bytes:
    body = json.dumps({
        "version": 1, "node": "asterisk-03.example.net", "seq": 48213,
        "time": "2024-05-01T12:00:00.250Z", "validity": 5, "state": "normal",
        "capacity": 0.62,
        "metrics": {
            "cpu": 0.41, "load1": 3.12, "memory": 0.55, "channels": 152,
            "max_channels": 400, "calls": 76, "call_rate": 4.5,
            "rtcp": {"mos": 4.21, "jitter_ms": 3.4, "loss": 0.002, "rtt_ms": 41},
            "probe_ms": 12.5, "net": {"rx_pps": 15230, "tx_pps": 15102, "drops": 0},
        },
        "draining": False,
        "reasons": ["cpu below threshold", "channels below threshold"],
    }, separators=(",", ":")).encode()
    body += b" " * max(0, 500 - len(body))  # pad to ~500 octets
    request = Request("NOTIFY", "sip:watcher@192.0.2.10:5060;transport=udp", [
        ("Via", "SIP/2.0/UDP 192.0.2.31:5070;branch=z9hG4bK7f3a9c2e1d5b4a6f;rport"),
        ("Max-Forwards", "70"),
        ("Route", "<sip:192.0.2.2;lr>"),
        ("From", "<sip:agent@asterisk-03.example.net>;tag=8c1e2f3a"),
        ("To", "<sip:watcher@proxy.example.net>;tag=a93b1f00"),
        ("Call-ID", "4f8d2c1a9e7b6d5c@192.0.2.10"),
        ("CSeq", "48213 NOTIFY"),
        ("Contact", "<sip:agent@192.0.2.31:5070>"),
        ("Event", "load-status"),
        ("Subscription-State", "active;expires=600"),
        ("Content-Type", "application/load-status+json"),
        ("User-Agent", "sipstatus-agent/0.1.0"),
    ], body)
    return request.to_bytes()


def hostile_datagrams() -> dict[str, bytes]:
    """Crafted ~60 kB datagrams aimed at quadratic corners of a parser.

    Each line stays under MAX_LINE_LENGTH so the parser really reads it
    (except the first, where the unfolding itself is the target).
    """
    head = (b"NOTIFY sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 NOTIFY\r\n")
    n, lines = 8000, 7
    return {
        "spaces before a fold": head + b"X: a" + b" " * 60_000 + b"\r\n b\r\n\r\n",
        "semicolons": head + (b"Contact: <sip:a@h>" + b";a=b" * (n // 4) + b"\r\n") * lines
        + b"\r\n",
        "quoted pairs": head + (b'Contact: "' + b"\\a" * (n // 2) + b'" <sip:a@h>\r\n') * lines
        + b"\r\n",
        "commas": head + (b"Contact: " + b"<sip:a@h>," * (n // 10) + b"<sip:a@h>\r\n") * lines
        + b"\r\n",
        "escapes": head + (b"Contact: <sip:" + b"%41" * (n // 3) + b"@h>\r\n") * lines + b"\r\n",
    }


def worst_case(datagram: bytes) -> float:
    """Seconds to parse (or reject) one hostile datagram and read its Contacts."""
    start = time.perf_counter()
    try:
        parse_message(datagram).contacts  # noqa: B018
    except SipError:
        pass
    return time.perf_counter() - start


def rate(function, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            function()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    data = typical_notify()
    message = parse_message(data)
    assert message.to_bytes() == data
    parse_rate = rate(lambda: parse_message(data), seconds)
    serialise_rate = rate(message.to_bytes, seconds)
    parse_and_read_rate = rate(
        lambda: (m := parse_message(data), m.event, m.subscription_state, m.cseq), seconds)
    lines = [
        f"sip_parse benchmark: NOTIFY of {len(data)} bytes ({len(message.body)}-byte body)",
        f"python {platform.python_version()} on {platform.machine()}",
        f"parsed per second:      {parse_rate:12,.0f}  ({1e6 / parse_rate:6.1f} us each)",
        f"serialised per second:  {serialise_rate:12,.0f}  ({1e6 / serialise_rate:6.1f} us each)",
        f"parsed + Event/Subscription-State/CSeq read per second: "
        f"{parse_and_read_rate:,.0f}  ({1e6 / parse_and_read_rate:.1f} us each)",
    ]
    for name, datagram in hostile_datagrams().items():
        elapsed = min(worst_case(datagram) for _ in range(3))
        lines.append(f"hostile {len(datagram)}-byte datagram, {name}: {elapsed * 1e3:.2f} ms")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(__file__).resolve().parent / "results" / "sip_parse.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
