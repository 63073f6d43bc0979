"""Every body vector in spec/vectors/body/ against both the JSON Schema and
the codec (the runner and EXPECTED.tsv's form: tests/support/vectors.py)."""

from sipstatus.codec import decode
from tests.support.vectors import vector_tests

globals().update(vector_tests("body", "load-status.schema.json", decode))
