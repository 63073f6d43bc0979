"""Every load-affinity body vector in spec/vectors/affinity/ against both the
JSON Schema and the codec (spec/load-affinity.md section 4).

EXPECTED.tsv has the form of spec/vectors/body/EXPECTED.tsv: the codec's
outcome (and the member and rule it must name), the schema's outcome, and
a note wherever the two differ because of a rule of section 4.2.
"""

import csv
import json

import jsonschema
import pytest

from sipstatus.affinity import decode
from sipstatus.codec import StatusError
from tests.support import ROOT

SPEC = ROOT / "spec"
VECTORS = SPEC / "vectors" / "affinity"
SCHEMA = json.loads((SPEC / "load-affinity.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

with (VECTORS / "EXPECTED.tsv").open(newline="") as f:
    ROWS = list(csv.DictReader(f, delimiter="\t"))


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_vector_file_has_an_expectation_and_every_expectation_a_file():
    files = {p.name for p in VECTORS.glob("*.json")}
    assert files == {row["file"] for row in ROWS}
    assert all(row["file"].startswith(row["codec"] + "-") for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_codec_outcome(row):
    data = (VECTORS / row["file"]).read_bytes()
    if row["codec"] == "valid":
        decode(data)
    else:
        with pytest.raises(StatusError) as err:
            decode(data)
        assert (err.value.member or "body", err.value.rule) == (row["member"], row["rule"])


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_schema_outcome(row):
    data = (VECTORS / row["file"]).read_bytes()
    try:
        obj = json.loads(data)
    except ValueError:
        outcome = "not-json"
    else:
        outcome = "valid" if VALIDATOR.is_valid(obj) else "invalid"
    assert outcome == row["schema"]


def test_schema_and_codec_differ_only_where_the_note_says_why():
    for row in ROWS:
        if row["schema"] != "not-json" and row["schema"] != row["codec"]:
            assert row["note"] != "-", row["file"]


def test_every_rule_of_section_4_2_has_a_vector():
    rules = {(row["member"], row["rule"]) for row in ROWS}
    assert {("page", "maximum"), ("base", "maximum"), ("add", "maxItems"), ("del", "disjoint")} <= rules
