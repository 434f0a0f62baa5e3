"""The published NDJSON contract: ``events.schema.json`` beside this file."""

from pathlib import Path

PATH = Path(__file__).with_name("events.schema.json")
