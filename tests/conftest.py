"""Shared fixtures: a seeded demo registry and a real server on 127.0.0.1:0."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featurizer.demo import init_demo
from tests.support.servers import running_server


@pytest.fixture(scope="session")
def demo_registry_template(tmp_path_factory) -> Path:
    """Written once per session (seeded AlexNet); tests that change a registry copy it."""
    root = tmp_path_factory.mktemp("demo-registry")
    init_demo(root)
    return root


@pytest.fixture
def demo_registry(demo_registry_template, tmp_path) -> Path:
    """A private copy of the demo registry that a test may change."""
    root = tmp_path / "registry"
    shutil.copytree(demo_registry_template, root)
    return root


@pytest.fixture(scope="session")
def demo_server(demo_registry_template):
    """A shared read-only server on the demo registry."""
    with running_server(demo_registry_template) as server:
        yield server
