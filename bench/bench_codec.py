"""Body sizes and encode/decode time of the load-status codec.

Prints the size of a typical and of a maximal body and the time per encode
and per decode (median of several runs), and writes them to
bench/results/codec.txt.
"""

import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipstatus.codec import decode, encode  # noqa: E402

VECTORS = ROOT / "spec" / "vectors" / "body"
RUNS = 7
LOOPS = 20_000


def per_call(fn, arg) -> float:
    """Median seconds per call over RUNS runs of LOOPS calls."""
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(LOOPS):
            fn(arg)
        samples.append((time.perf_counter() - start) / LOOPS)
    return statistics.median(samples)


def main() -> None:
    lines = [f"# codec benchmark, Python {platform.python_version()}, {platform.machine()}"]
    for name in ("valid-typical.json", "valid-minimal.json", "valid-maximal.json"):
        body = (VECTORS / name).read_bytes()
        status = decode(body)
        encoded = encode(status)
        dec = per_call(decode, encoded)
        enc = per_call(encode, status)
        lines.append(
            f"{name:22s} body {len(encoded):5d} octets   encode {enc * 1e6:6.1f} us   "
            f"decode {dec * 1e6:6.1f} us   ({1 / enc:,.0f} encodes/s, {1 / dec:,.0f} decodes/s)"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = ROOT / "bench" / "results" / "codec.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
