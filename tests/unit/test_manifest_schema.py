"""docs/model.schema.json: generated from the manifest's own classes, and true of real manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from featurizer.registry.manifest import MANIFEST_FILE, ManifestError, json_schema, parse_manifest

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "model.schema.json"
SHA = "0123456789abcdef" * 4
REGENERATE = "regenerate it: python -m featurizer.registry.manifest --schema > docs/model.schema.json"


def committed() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def test_the_committed_schema_is_the_generated_one():
    assert committed() == json_schema(), f"docs/model.schema.json is stale; {REGENERATE}"
    Draft202012Validator.check_schema(committed())


def test_the_schema_command_prints_the_committed_file():
    result = subprocess.run([sys.executable, "-m", "featurizer.registry.manifest", "--schema"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


def test_every_manifest_of_the_demo_registry_validates(demo_registry_template):
    validator = Draft202012Validator(committed())
    manifests = sorted(demo_registry_template.glob(f"*/*/{MANIFEST_FILE}"))
    assert manifests, "the demo registry has no model.json"
    for path in manifests:
        raw = json.loads(path.read_text(encoding="utf-8"))
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
        assert errors == [], path
        parse_manifest(raw, str(path))  # and the server takes it


def valid() -> dict:
    return {"kind": "head", "architecture": "feature_head", "params": {"in_features": 256, "num_classes": 2},
            "backbone": {"model": "alexnet", "version": 1}, "output": {"labels": ["no", "yes"]},
            "weights": {"sha256": SHA}}


@pytest.mark.parametrize("change", [
    {"kind": "detector"},
    {"backbone": None},
    {"output": {"labels": []}},
    {"weights": {}},
    {"weights": {"sha256": SHA, "file": "../w.safetensors"}},
    {"kind": "features", "input": {"mode": "stretch"}},
    {"kind": "features", "output": {"shape": [0]}},
    {"batching": {"max_delay_ms": -1}},
])
def test_the_schema_refuses_what_the_server_refuses(change):
    """Not a vacuous schema: the cross-field rules (a head's backbone, labels, a named sha256) too."""
    raw = {**valid(), **change}
    if raw["kind"] == "features":
        raw.pop("backbone")
    with pytest.raises(ManifestError):
        parse_manifest(raw)
    assert not Draft202012Validator(committed()).is_valid(raw)
    assert Draft202012Validator(committed()).is_valid(valid())
