"""model.json validation: every refusal names the field and the value that was wrong."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from featurizer.registry.manifest import (BackboneRef, InputMode, InputSpec, Kind, Manifest, ManifestError, OutputSpec,
                                          load_manifest, parse_manifest)

SHA = "0123456789abcdef" * 4


def features_raw() -> dict:
    return {"kind": "features", "architecture": "alexnet_features", "params": {"layer": "conv3", "pooling": "avg"},
            "input": {"mode": "resize_crop", "resize": 256, "height": 224, "width": 224},
            "output": {"shape": [384]}, "weights": {"file": "weights.safetensors", "sha256": SHA}}


def head_raw() -> dict:
    return {"kind": "head", "architecture": "feature_head", "params": {"in_features": 256, "num_classes": 2},
            "backbone": {"model": "alexnet", "version": 1},
            "output": {"shape": [2], "labels": ["no", "yes"]}, "weights": {"sha256": SHA}}


def test_a_valid_manifest_round_trips_through_json(tmp_path):
    for raw in (features_raw(), head_raw()):
        manifest = parse_manifest(raw)
        path = tmp_path / "model.json"
        path.write_text(manifest.to_json())
        assert load_manifest(path) == manifest
    head = parse_manifest(head_raw())
    assert (head.backbone.model, head.backbone.version) == ("alexnet", 1)
    assert head.output.labels == ("no", "yes") and head.weights.sha256 == SHA


def test_input_modes_and_their_sizes():
    native = parse_manifest({**features_raw(), "input": {"mode": "native"}}).input
    assert native.size is None and native.mode == "native"
    resize = parse_manifest({**features_raw(), "input": {"mode": "resize", "height": 32, "width": 48}}).input
    assert resize.size == (32, 48) and resize.resize is None
    default = parse_manifest({**features_raw(), "input": {}}).input
    assert (default.mode, default.resize, default.size) == ("resize_crop", InputSpec().resize, (224, 224))


def mutated(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    target = raw
    for key in parents:
        target = target.setdefault(key, {})
    if value is KeyError:
        target.pop(last, None)
    else:
        target[last] = value
    return raw


@pytest.mark.parametrize("path, value, message", [
    ("kind", "detector", "'kind' must be one of features, classifier, head, got 'detector'"),
    ("architecture", "", "'architecture' must name a builder, got ''"),
    ("params", [1], "'params' must be an object, got [1]"),
    ("input.mode", "stretch", "'input.mode' must be one of resize_crop, resize, native, got 'stretch'"),
    ("input.height", 0, "'input.height' must be a positive integer, got 0"),
    ("input.width", True, "'input.width' must be a positive integer, got True"),
    ("input.resize", 100, "'input.resize' (100) must be at least the crop's short side (224)"),
    ("input.mean", [0.5, 0.5], "'input.mean' must be 3 finite numbers, got [0.5, 0.5]"),
    ("input.std", [0.5, 0.0, 0.5], "'input.std' must be 3 positive numbers"),
    ("output.shape", [9216, 0], "'output.shape' must be a list of positive integers (or -1), got [9216, 0]"),
    ("weights.sha256", "ABC", "'weights.sha256' must be 64 lowercase hex digits, got 'ABC'"),
    ("weights.file", "../other/weights.safetensors", "'weights.file' must be a .safetensors file name"),
    ("weights.file", "weights.pth", "got 'weights.pth'"),
    ("batching.max_batch_size", -4, "'batching.max_batch_size' must be a positive integer, got -4"),
    ("batching.max_delay_ms", -1, "'batching.max_delay_ms' must be >= 0, got -1"),
    ("backbone", {"model": "alexnet", "version": 1}, "only heads have a 'backbone'; this is a 'features' model"),
    ("kind", KeyError, "'kind' is missing"),
    ("input", 5, "'input' must be an object, got 5"),
    ("input.resize", None, "'input.resize' must be a positive integer, got None"),
    ("input.mean", [0.5, float("nan"), 0.5], "'input.mean' must be 3 finite numbers, got [0.5, nan, 0.5]"),
    ("output.shape", "384", "'output.shape' must be a list of positive integers (or -1), got '384'"),
    ("weights.sha256", KeyError, "'weights.sha256' must be 64 lowercase hex digits, got ''"),
    ("weights", KeyError, "'weights.sha256' must be 64 lowercase hex digits, got ''"),
    ("weights.file", ".safetensors", "'weights.file' must be a .safetensors file name"),
    ("batching.max_batch_size", 2.0, "'batching.max_batch_size' must be a positive integer, got 2.0"),
])
def test_features_manifest_errors_name_field_and_value(path, value, message):
    with pytest.raises(ManifestError) as error:
        parse_manifest(mutated(features_raw(), path, value), "alexnet/2/model.json")
    assert str(error.value).startswith("alexnet/2/model.json: ")
    assert message in str(error.value)


@pytest.mark.parametrize("path, value, message", [
    ("backbone", KeyError, "a head needs 'backbone'"),
    ("backbone.version", 0, "'backbone.version' must be a positive integer, got 0"),
    ("output.labels", KeyError, "a head model needs 'output.labels'"),
    ("output.labels", ["a", 2], "'output.labels' must be a list of strings"),
])
def test_head_manifest_errors_name_field_and_value(path, value, message):
    with pytest.raises(ManifestError, match="model.json: ") as error:
        parse_manifest(mutated(head_raw(), path, value))
    assert message in str(error.value)


def test_unreadable_files_are_reported_with_their_path(tmp_path):
    with pytest.raises(ManifestError, match="m/1/model.json: missing"):
        load_manifest(tmp_path / "model.json", where="m/1/model.json")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "model.json")
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest(tmp_path / "model.json")


def test_every_broken_field_is_named_at_once():
    raw = mutated(mutated(features_raw(), "input.height", 0), "weights.sha256", "x")
    with pytest.raises(ManifestError) as error:
        parse_manifest(raw, "m/1/model.json")
    assert "'input.height' must be a positive integer, got 0" in str(error.value)
    assert "'weights.sha256' must be 64 lowercase hex digits, got 'x'" in str(error.value)


def test_kinds_and_modes_are_enum_members():
    features, head = parse_manifest(features_raw()), parse_manifest(head_raw())
    assert features.kind is Kind.FEATURES and head.kind is Kind.HEAD and features.input.mode is InputMode.RESIZE_CROP
    assert Manifest(kind="classifier", architecture="largenet", output=OutputSpec(labels=("a",))).kind is Kind.CLASSIFIER


def test_sizes_a_mode_does_not_use_and_a_heads_input_are_ignored():
    native = parse_manifest(mutated(features_raw(), "input", {"mode": "native", "height": 0, "resize": "x"})).input
    assert (native.resize, native.height, native.width) == (None, None, None)
    assert parse_manifest(mutated(features_raw(), "input", {"mode": "resize", "resize": 1})).input.resize is None
    head = parse_manifest({**head_raw(), "input": {"mode": "stretch"}})  # a head reads its backbone's input
    assert head.input == InputSpec()


def test_a_manifest_built_in_code_leaves_the_digest_to_publishing():
    """Python callers (training, the demo) build manifests before the weights exist; files may not."""
    built = Manifest(kind="head", architecture="feature_head", backbone=BackboneRef("alexnet", 1),
                     output=OutputSpec(shape=(2,), labels=("no", "yes")))
    assert built.weights.sha256 == ""
    published = dataclasses.replace(built, weights=dataclasses.replace(built.weights, sha256="ab" * 32))
    assert parse_manifest(json.loads(published.to_json())) == published
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.kind = Kind.FEATURES  # type: ignore[misc]
