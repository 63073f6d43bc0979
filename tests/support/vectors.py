"""One runner for an event package's body vectors (spec/vectors/<folder>/),
each file checked against both the package's JSON Schema and its codec.

The folder's EXPECTED.tsv gives each file's expected outcome: for the codec
(valid, or invalid with the member and rule it must name) and for the JSON
Schema (valid, invalid, or not-json). Where the two differ the spec has a
rule that JSON Schema cannot express, and the row's note says which.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable

import jsonschema
import pytest

from sipstatus.codec import StatusError
from tests.support import SPEC


def expected_rows(folder: str) -> list[dict[str, str]]:
    """The rows of spec/vectors/FOLDER/EXPECTED.tsv."""
    with (SPEC / "vectors" / folder / "EXPECTED.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def vector_tests(folder: str, schema_file: str, decode: Callable[[bytes], object]) -> dict[str, Callable[..., None]]:
    """The tests of spec/vectors/FOLDER/ for the schema spec/SCHEMA_FILE and
    `decode`, by name, for a test module to take into its namespace."""
    vectors = SPEC / "vectors" / folder
    schema = json.loads((SPEC / schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    rows = expected_rows(folder)
    ids = [r["file"] for r in rows]

    def test_the_schema_is_a_valid_draft_2020_12_schema():
        jsonschema.Draft202012Validator.check_schema(schema)

    def test_every_vector_file_has_an_expectation_and_every_expectation_a_file():
        files = {p.name for p in vectors.glob("*.json")}
        assert files == {row["file"] for row in rows}
        assert all(row["file"].startswith(row["codec"] + "-") for row in rows)

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_codec_outcome(row):
        data = (vectors / row["file"]).read_bytes()
        if row["codec"] == "valid":
            decode(data)
        else:
            with pytest.raises(StatusError) as err:
                decode(data)
            # Spec 6.6: "body" names an error of the whole body.
            assert (err.value.member or "body", err.value.rule) == (row["member"], row["rule"])
            assert row["member"] == "body" or str(err.value).startswith(row["member"] + ": ")

    @pytest.mark.parametrize("row", rows, ids=ids)
    def test_schema_outcome(row):
        data = (vectors / row["file"]).read_bytes()
        try:
            obj = json.loads(data, parse_constant=_reject)
        except ValueError:
            outcome = "not-json"
        else:
            outcome = "valid" if validator.is_valid(obj) else "invalid"
        assert outcome == row["schema"]

    def test_schema_and_codec_differ_only_where_the_note_says_why():
        for row in rows:
            if row["schema"] != "not-json" and row["schema"] != row["codec"]:
                assert row["note"] != "-", row["file"]

    return {test.__name__: test for test in (
        test_the_schema_is_a_valid_draft_2020_12_schema,
        test_every_vector_file_has_an_expectation_and_every_expectation_a_file,
        test_codec_outcome,
        test_schema_outcome,
        test_schema_and_codec_differ_only_where_the_note_says_why,
    )}


def _reject(name: str) -> None:
    """NaN and Infinity are not JSON (RFC 8259 section 6)."""
    raise ValueError(name)
