"""The conformance kit (`sipstatus conform compositor`) against the real OpenSIPS 3.6.8
running packaging/examples/opensips/compositor/opensips.cfg, as the real-OpenSIPS
tier runs it (tests/opensips_runner.py: only its CUSTOMIZE ME lines changed).

Every rule the kit checks must pass, the same rules, in the same order, as
against the library's own compositor (so a run cut short cannot pass); the
run time is printed (the closing note's figure).

Found by the kit: OpenSIPS script compares strings without case (`==` and
`!=` are str_casematch in route.c), so the config answered `Event:
LOAD-STATUS` with 200 where spec 4.1 says 489; it now compares the header's
hex (`{s.encode.hexa}`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sipstatus import conform
from tests.conform_peers import Served, compositor
from tests.kamailio_runner import HOST, free_udp_port
from tests.opensips_runner import (
    EXAMPLES,
    OpenSips,
    PoolEntry,
    customize,
    dbtext_tables,
    opensips_build,
)

PREFIX, WHY = opensips_build()

pytestmark = [pytest.mark.opensips, pytest.mark.skipif(PREFIX is None, reason=WHY)]


def test_the_opensips_compositor_example_passes_as_compositor(tmp_path: Path):
    assert PREFIX is not None
    port = free_udp_port()
    pool = [PoolEntry("ast1", 1, free_udp_port())]  # nothing listens there: no call is made
    run = tmp_path / "opensips"
    text = customize((EXAMPLES / "compositor" / "opensips.cfg").read_text(), port=port, dbtext=run / "dbtext",
                     pool=pool, modules=PREFIX / "lib64" / "opensips" / "modules")
    dbtext_tables(run / "dbtext", pool)
    opensips = OpenSips(PREFIX, run, text, port)
    opensips.start()
    try:
        started = time.monotonic()
        report = conform.run("compositor", f"sip:{HOST}:{port}", node="ast1")
        took = time.monotonic() - started
        alive = opensips.alive()
    finally:
        opensips.stop()
    print(f"\nconform compositor against OpenSIPS: {len(report.results)} rules in {took:.2f} s")
    assert report.ok, "\n".join(r.line() for r in report.failed) or "no rule checked"
    with Served(compositor()) as served:
        reference = conform.run("compositor", served.target)
    assert [(r.rule, r.text) for r in report.results] == [(r.rule, r.text) for r in reference.results]
    assert alive, opensips.log_tail()
    assert opensips.problems() == []
