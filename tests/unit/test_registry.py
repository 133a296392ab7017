"""The registry on disk (scan, atomic publish, integrity, aliases); the builders it names are
tested in test_architectures.py."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from featurizer.architectures import build
from featurizer.registry.registry import Registry, RegistryError, alias_chain, parse_target, sha256_file
from tests.support.registries import flip_byte, publish_largenet

PUBLISHERS = 6


def test_publish_numbers_versions_and_records_the_weights_hash(tmp_path):
    registry = Registry(tmp_path)
    assert [publish_largenet(tmp_path, seed=s) for s in range(3)] == [1, 2, 3]
    manifest = registry.manifest("largenet", 2)
    assert manifest.weights.sha256 == sha256_file(tmp_path / "largenet" / "2" / "weights.safetensors")
    state = registry.load_weights("largenet", 2, manifest)
    torch.manual_seed(1)
    assert torch.equal(state["fc2.weight"], build("largenet", {"num_classes": 2}).state_dict()["fc2.weight"])
    with pytest.raises(RegistryError, match="largenet/2 already exists"):
        publish_largenet(tmp_path, version=2)


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    results: list[int] = []
    start = threading.Barrier(PUBLISHERS)

    def publish(seed: int) -> None:
        start.wait()
        results.append(publish_largenet(tmp_path, seed=seed))

    threads = [threading.Thread(target=publish, args=(s,)) for s in range(PUBLISHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(1, PUBLISHERS + 1))
    assert not [p for p in (tmp_path / "largenet").iterdir() if p.name.startswith(".")]


def test_scan_sees_only_complete_canonical_versions(tmp_path):
    publish_largenet(tmp_path)
    model_dir = tmp_path / "largenet"
    for junk in (".tmp-half-written", "0", "007", "latest"):
        (model_dir / junk).mkdir()
    (tmp_path / ".hidden-model" / "1").mkdir(parents=True)
    scan = Registry(tmp_path).scan()
    assert sorted(scan.versions) == [("largenet", 1)]
    before = scan.versions[("largenet", 1)].fingerprint
    (model_dir / "1" / "model.json").write_text((model_dir / "1" / "model.json").read_text() + " ")
    assert Registry(tmp_path).scan().versions[("largenet", 1)].fingerprint != before
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "missing").scan()


def test_flipped_byte_fails_the_load_and_verify_names_the_file(tmp_path):
    registry = Registry(tmp_path)
    publish_largenet(tmp_path)
    publish_largenet(tmp_path)
    assert registry.verify() == []
    bad = tmp_path / "largenet" / "2" / "weights.safetensors"
    flip_byte(bad, offset=len(bad.read_bytes()) // 2)
    with pytest.raises(RegistryError, match=r"largenet/2/weights.safetensors: sha256 mismatch"):
        registry.load_weights("largenet", 2, registry.manifest("largenet", 2))
    problems = registry.verify()
    assert len(problems) == 1 and problems[0].startswith(str(bad)) and sha256_file(bad) in problems[0]
    (tmp_path / "largenet" / "1" / "weights.safetensors").unlink()
    assert any(p.startswith("largenet/1:") for p in registry.verify())


def test_aliases_resolve_pin_and_refuse_cycles(tmp_path):
    registry = Registry(tmp_path)
    publish_largenet(tmp_path)
    registry.set_alias("prod", "largenet@1")
    registry.set_alias("stable", "prod")
    aliases = registry.scan().aliases
    assert alias_chain(aliases, "stable") == ("largenet", 1) and alias_chain(aliases, "largenet") == ("largenet", 0)
    registry.set_alias("a", "b")
    with pytest.raises(RegistryError, match="alias cycle: b -> a -> b"):
        registry.set_alias("b", "a")
    assert "b" not in registry.scan().aliases  # nothing written
    with pytest.raises(RegistryError, match="version must be a positive integer"):
        registry.set_alias("x", "largenet@0")
    with pytest.raises(RegistryError, match="invalid alias name '../x'"):
        registry.set_alias("../x", "largenet")
    assert parse_target("m@12") == ("m", 12)
    registry.set_alias("dangling", "nothing@3")
    assert any("dangling -> nothing@3: no such model version" in p for p in registry.verify())
    (tmp_path / "aliases.json").write_text(json.dumps({"x": 1}))
    assert registry.scan().alias_error.startswith("aliases.json: must map alias names")


def test_publish_file_refuses_files_that_are_not_safetensors(tmp_path):
    registry = Registry(tmp_path / "registry")
    bogus = tmp_path / "weights.safetensors"
    bogus.write_bytes(b"not safetensors")
    publish_largenet(registry.root)
    with pytest.raises(RegistryError, match="not a valid safetensors file"):
        registry.publish_file("m", registry.manifest("largenet", 1), bogus)
    assert not (registry.root / "m").exists()
