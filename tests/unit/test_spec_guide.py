"""spec/implementing.md quotes the tested examples exactly and names routes they have."""

from __future__ import annotations

import re

import pytest

from tests.support import ROOT

GUIDE = (ROOT / "spec" / "implementing.md").read_text()
KAMAILIO = ROOT / "packaging/examples/kamailio/native/sipstatus.cfg"
OPENSIPS = ROOT / "packaging/examples/opensips/compositor/opensips.cfg"


def quotations() -> list[tuple[str, str]]:
    """(source file, quoted text) for each block introduced by "From `file`:"."""
    found = re.findall(r"From `([^`]+)`:\n\n```\n(.*?)\n```", GUIDE, flags=re.S)
    assert found, "the guide quotes nothing"
    return found


@pytest.mark.parametrize("source, text", quotations(), ids=[t.split("\n", 1)[0] for _, t in quotations()])
def test_every_quotation_is_in_its_example_word_for_word(source, text):
    assert text in (ROOT / source).read_text()


def section(title: str) -> str:
    return GUIDE.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("title, config", [("Kamailio", KAMAILIO), ("OpenSIPS", OPENSIPS)])
def test_every_route_the_guide_names_exists_in_the_example(title, config):
    names = set(re.findall(r"route\[([A-Z_]+)\]", section(title)))
    assert names
    text = config.read_text()
    missing = [n for n in names if not re.search(rf"^route\[{n}\]", text, flags=re.M)]
    assert not missing
