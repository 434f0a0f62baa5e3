"""The spec (tracer/spec.py) is the one definition of every record: the
committed schema and the README's table must be what it generates."""

import doctest
from pathlib import Path

import jsonschema

from tracer import records, spec
from tracer.schema import PATH

README = Path(__file__).resolve().parent.parent / "README.md"


def test_committed_schema_is_generated():
    assert PATH.read_text() == spec.schema_text(), (
        "tracer/schema/events.schema.json is stale: run python -m tracer.spec write")
    jsonschema.Draft202012Validator.check_schema(spec.json_schema())


def test_readme_table_is_generated():
    text = README.read_text()
    assert spec.TABLE_BEGIN in text and spec.TABLE_END in text
    assert spec.readme_with_table(text) == text, (
        "README.md's record table is stale: run python -m tracer.spec write")


def test_every_record_type_is_declared_once_with_unique_fields():
    assert tuple(spec.RECORDS) == spec.RECORD_TYPES
    for rtype, fields in spec.RECORDS.items():
        names = [f.name for f in fields]
        assert len(names) == len(set(names)), rtype
        assert names[0] == "type" and names[1] == "ts", rtype
        assert "source" in names, rtype


def test_formatter_builds_exactly_the_spec():
    """records.state/closed make dicts in the spec's order: checked on a
    real-looking record of each (tests/test_records.py has more)."""
    from test_records import closed_raw, ring, state_raw

    recs, bad = records.decode(records.Formatter(0), ring(
        state_raw(1, 1, "CLOSE", "SYN_SENT"), closed_raw(5, 1, 1, ["SYN_SENT"])))
    assert bad == 0
    for r in recs:
        assert list(r) == list(spec.names(r["type"]))


def test_doctests():
    assert doctest.testmod(spec).failed == 0
