"""The role checklists (spec/roles/) agree with the full text and with the code.

What can be compared mechanically is: the response codes each role sends
(against Appendix A of spec/load-status.md), the sections each row points
to (they exist), the subscriber's list of refusals (against the code's), and
every timer and limit that names the constant implementing it (the value in
the checklist is the constant's value).
"""

from __future__ import annotations

import importlib
import re

import pytest

from sipstatus.sip import subscription
from tests.support import ROOT

SPEC = ROOT / "spec"
ROLES = ("notifier", "subscriber", "publisher", "compositor", "body-reader")
FULL_TEXT = (SPEC / "load-status.md").read_text()


def tables(text: str, heading: str | None = None) -> list[list[dict[str, str]]]:
    """The tables of ``text`` (or of its ``## heading...`` section), as rows of cells."""
    if heading is not None:
        parts = re.split(r"^## ", text, flags=re.M)
        text = "\n".join(p for p in parts if p.startswith(heading))
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        if len(block) > 2:
            header = block[0]
            found.append([dict(zip(header, row, strict=True)) for row in block[2:]])
        block = []
    return found


def role(name: str) -> str:
    return (SPEC / "roles" / f"{name}.md").read_text()


def codes(cell: str) -> set[int]:
    return {int(c) for c in re.findall(r"\b[1-6]\d\d\b", cell)}


def appendix_a_codes(who: str) -> set[int]:
    appendix = FULL_TEXT.split("## Appendix A.", 1)[1].split("## Appendix B.", 1)[0]
    (rows,) = tables(appendix)
    return {int(r["Code"]) for r in rows if who in r["Sent by"] or r["Sent by"] == "all"}


def constant(path: str) -> object:
    """``package.module.NAME`` or ``package.module.Class.field``."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise AssertionError(f"no module in {path}")


def numbers(value: object) -> list[float]:
    if isinstance(value, tuple | list):
        return [n for item in value for n in numbers(item)]
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return [float(value)]


def timer_rows() -> list[tuple[str, dict[str, str]]]:
    rows = []
    for name in ROLES:
        for table in tables(role(name)):
            rows.extend((name, r) for r in table if r.get("Constant"))
    return rows


# -- the checklists exist and come first ----------------------------------------------------


def test_the_table_of_contents_lists_every_checklist_before_the_full_text():
    contents = FULL_TEXT.split("## Table of contents", 1)[1].split("1. Introduction", 1)[0]
    for name in ROLES:
        assert f"(roles/{name}.md)" in contents, name


@pytest.mark.parametrize("name", ROLES)
def test_a_checklist_fits_on_a_page_or_so(name):
    assert len(role(name).splitlines()) <= 120


# -- codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, section, who", [
    ("notifier", "Requests it answers", "notifier"),
    ("subscriber", "Requests it answers", "subscriber"),
    ("compositor", "Requests it answers", "compositor"),
])
def test_the_codes_a_role_answers_are_those_of_appendix_a(name, section, who):
    (rows,) = tables(role(name), section)
    listed = set().union(*(codes(r["Code"]) for r in rows))
    assert listed == appendix_a_codes(who)


def test_the_subscribers_refusals_are_the_codes_the_subscriber_treats_as_refusals():
    (rows,) = tables(role("subscriber"), "Responses it receives")
    (refusals,) = [r for r in rows if r["Code"].startswith("refusals")]
    assert codes(refusals["Code"]) == set(subscription.REFUSALS)


@pytest.mark.parametrize("status", [400, 403, 404, 405, 406, 415, 489, 501, 603, 422, 499])
def test_a_listed_or_other_4xx_refusal_is_a_refusal_in_the_code(status):
    assert subscription.Subscriber._is_refusal(status)


@pytest.mark.parametrize("status", [408, 423, 480, 481, 486, 491, 500, 503, 600])
def test_failures_with_their_own_rule_are_not_refusals_in_the_code(status):
    assert not subscription.Subscriber._is_refusal(status)


# -- pointers ---------------------------------------------------------------------------------


def test_every_section_a_checklist_points_to_exists():
    headings = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)[. ]", FULL_TEXT, flags=re.M))
    for name in ROLES:
        for table in tables(role(name)):
            for row in table:
                for number in re.findall(r"\d+(?:\.\d+)*", row.get("Section", "")):
                    assert number in headings, (name, row)


# -- timers and limits ------------------------------------------------------------------------


@pytest.mark.parametrize("name, row", timer_rows(), ids=[f"{n}: {r['What']}" for n, r in timer_rows()])
def test_a_timer_or_limit_in_a_checklist_is_the_codes_constant(name, row):
    paths = [p.strip(" `") for p in row["Constant"].split(",")]
    expected = [n for p in paths for n in numbers(constant(p))]
    written = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", row["Value"])]
    assert written == expected, (name, row["What"])


def test_every_role_with_timers_names_their_constants():
    named = {name for name, _ in timer_rows()}
    assert named == set(ROLES)
