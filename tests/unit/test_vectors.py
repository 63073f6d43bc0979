"""Every body vector in spec/vectors/body/ against both the JSON Schema and
the codec (the runner and EXPECTED.tsv's form: tests/support/vectors.py)."""

import json

from sipstatus.codec import SECTIONS, decode
from tests.support import SPEC
from tests.support.vectors import vector_tests

globals().update(vector_tests("body", "load-status.schema.json", decode))

SCHEMA = json.loads((SPEC / "load-status.schema.json").read_text())


def test_the_schema_has_every_metric_section_with_the_codecs_members():
    schema_sections = {name: list(value["properties"]) for name, value in SCHEMA["properties"].items()
                       if "object" in value.get("type", ()) and "properties" in value}
    assert schema_sections == {name: list(members) for name, (_, members) in SECTIONS.items()}
