"""Every load-affinity body vector in spec/vectors/affinity/ against both the
JSON Schema and the codec (spec/load-affinity.md section 4; the runner and
EXPECTED.tsv's form: tests/support/vectors.py)."""

from sipstatus.affinity import decode
from tests.support.vectors import expected_rows, vector_tests

globals().update(vector_tests("affinity", "load-affinity.schema.json", decode))


def test_every_rule_of_section_4_2_has_a_vector():
    rules = {(row["member"], row["rule"]) for row in expected_rows("affinity")}
    assert {("page", "maximum"), ("base", "maximum"), ("add", "maxItems"), ("del", "disjoint")} <= rules
