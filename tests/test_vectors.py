"""Every body vector in spec/vectors/body/ against both the JSON Schema and the codec.

spec/vectors/body/EXPECTED.tsv gives each file's expected outcome: for the
codec (valid, or invalid with the member and rule it must name) and for the
JSON Schema (valid, invalid, or not-json). Where the two differ the spec has
a rule that JSON Schema cannot express, and the row's note says which.
"""

import csv
import json
from pathlib import Path

import jsonschema
import pytest

from sipstatus.codec import SECTIONS, StatusError, decode

SPEC = Path(__file__).resolve().parents[1] / "spec"
VECTORS = SPEC / "vectors" / "body"
SCHEMA = json.loads((SPEC / "load-status.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())

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
        # Spec 6.6: "body" names an error of the whole body.
        assert (err.value.member or "body", err.value.rule) == (row["member"], row["rule"])
        assert row["member"] == "body" or str(err.value).startswith(row["member"] + ": ")


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_schema_outcome(row):
    data = (VECTORS / row["file"]).read_bytes()
    try:
        obj = json.loads(data, parse_constant=_reject)
    except ValueError:
        outcome = "not-json"
    else:
        outcome = "valid" if VALIDATOR.is_valid(obj) else "invalid"
    assert outcome == row["schema"]


def test_schema_and_codec_differ_only_where_the_note_says_why():
    for row in ROWS:
        if row["schema"] != "not-json" and row["schema"] != row["codec"]:
            assert row["note"] != "-", row["file"]


def test_the_schema_has_every_metric_section_with_the_codecs_members():
    schema_sections = {name: list(value["properties"]) for name, value in SCHEMA["properties"].items()
                       if "object" in value.get("type", ()) and "properties" in value}
    assert schema_sections == {name: list(members) for name, (_, members) in SECTIONS.items()}


def _reject(name: str) -> None:
    raise ValueError(name)
