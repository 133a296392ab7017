"""The generated stubs live in one place and must match the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    committed = ROOT / "client" / "featurizer_client" / "v1"
    stale = [name for name in generate.GENERATED
             if (tmp_path / name).read_text() != (committed / name).read_text()]
    assert not stale, f"stubs are stale against the .proto; run `make protos` ({stale})"


def test_stubs_exist_only_in_the_client_package():
    ignored = {".venv", "node_modules", "build", "dist", "site-packages"}  # installs, not sources
    found = [p for p in ROOT.rglob("*_pb2*.py") if not ignored.intersection(p.relative_to(ROOT).parts)]
    assert {p.parent for p in found} == {ROOT / "client" / "featurizer_client" / v for v in ("v1", "v2")}, found
