"""Publishing weights from files: what ``featurizer registry add`` and ``import-torchvision`` do.

Every manifest goes through ``parse_manifest`` (the same checks the server applies) and every
weights file is loaded into its architecture before it is published, so a mistake is reported to
the operator at publish time instead of as a FAILED version on every server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file

from featurizer.architectures import Pooling, apply_pooling, build
from featurizer.registry.loader import load_module
from featurizer.registry.manifest import InputMode, Kind, Manifest, ManifestError, parse_manifest
from featurizer.registry.registry import Registry, RegistryError, sha256_file

NO_SHA256 = "0" * 64  # placeholder: publishing computes the real digest
TORCHVISION_ARCHS = ("alexnet",)


def manifest_from_json(path: Path) -> dict[str, Any]:
    """A model.json written by hand: decoded, not yet validated."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"--manifest {path}: not readable JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"--manifest {path}: must be a JSON object")
    return raw


def prepare_manifest(raw: Mapping[str, Any], weights_file: Path, where: str) -> Manifest:
    """Validate ``raw``; a sha256 it already names must match ``weights_file`` (else it is filled in)."""
    raw = dict(raw)
    weights = raw.get("weights", {})
    if isinstance(weights, dict):  # anything else: parse_manifest names the problem
        given = weights.get("sha256")
        if given:
            actual = sha256_file(weights_file)
            if given != actual:
                raise ManifestError(f"{where}: 'weights.sha256' is {given} but {weights_file} hashes to {actual}")
        raw["weights"] = {**weights, "sha256": NO_SHA256}
    return parse_manifest(raw, where)


def check_fits(manifest: Manifest, state: Mapping[str, torch.Tensor], where: str) -> torch.nn.Module:
    """Load ``state`` into the manifest's architecture (strict) with the server's own loader;
    returns the module."""
    return load_module(manifest, state, where)


def add_version(registry: Registry, model: str, raw: Mapping[str, Any], weights_file: Path,
                version: Optional[int] = None) -> int:
    """Publish an existing safetensors file with a manifest given as data."""
    where = f"{model} (new version)"
    manifest = prepare_manifest(raw, weights_file, where)
    try:
        state = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own error types
        raise RegistryError(f"--from {weights_file}: not a valid safetensors file ({error})") from None
    check_fits(manifest, state, where)
    return registry.publish_file(model, manifest, weights_file, version=version)


def torchvision_state(arch: str, weights_file: Optional[Path]) -> dict[str, torch.Tensor]:
    """A torchvision state dict: from a saved file (tensors only, never pickled code), or, with no
    file, torchvision's IMAGENET1K_V1 weights (downloads: only on a connected machine)."""
    if arch not in TORCHVISION_ARCHS:
        raise ManifestError(f"--arch: expected one of {', '.join(TORCHVISION_ARCHS)}, got {arch!r}")
    if weights_file is None:
        from torchvision.models import AlexNet_Weights

        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise RegistryError(f"--weights-file {weights_file}: not a tensors-only state dict ({error})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RegistryError(f"--weights-file {weights_file}: expected a state dict of tensors")
    return dict(state)


def alexnet_manifest(*, classifier: bool, layer: str, pooling: str) -> Manifest:
    """AlexNet with torchvision's IMAGENET1K_V1 preprocessing and (for the classifier) its labels."""
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    preset = weights.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    raw: dict[str, Any] = {
        "input": {"mode": InputMode.RESIZE_CROP, "resize": resize, "height": crop, "width": crop,
                  "mean": list(preset.mean), "std": list(preset.std)},
        "weights": {"sha256": NO_SHA256},
        "description": "torchvision AlexNet (layout of AlexNet_Weights.IMAGENET1K_V1)",
    }
    if classifier:
        labels = list(weights.meta["categories"])
        raw |= {"kind": Kind.CLASSIFIER, "architecture": "alexnet_classifier", "params": {"num_classes": len(labels)},
                "output": {"shape": [len(labels)], "labels": labels}}
    else:
        raw |= {"kind": Kind.FEATURES, "architecture": "alexnet_features", "params": {"layer": layer, "pooling": pooling}}
    return parse_manifest(raw, "import-torchvision")


def import_torchvision(registry: Registry, model: str, *, arch: str, weights_file: Optional[Path],
                       layer: str = "pool5", pooling: str = "flatten", classifier: bool = False,
                       version: Optional[int] = None) -> int:
    """Publish torchvision AlexNet weights as a features stack cut after ``layer`` or as the classifier."""
    state = torchvision_state(arch, weights_file)
    manifest = alexnet_manifest(classifier=classifier, layer=layer, pooling=pooling)
    with torch.device("meta"):  # names only: no memory, no initialisation
        wanted = build(manifest.architecture, manifest.params).state_dict().keys()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise RegistryError(f"--weights-file: not torchvision's {arch} layout; missing {', '.join(missing[:4])}")
    state = {k: state[k] for k in wanted}
    module = check_fits(manifest, state, "import-torchvision")
    if not classifier:  # record the output shape at the preset's input size
        size = manifest.input.size
        assert size is not None, "torchvision's preset crops to a fixed size"
        h, w = size
        with torch.inference_mode():
            out = apply_pooling(module.eval()(torch.zeros(1, 3, h, w)), Pooling(pooling))
        manifest = replace(manifest, output=replace(manifest.output, shape=tuple(out.shape[1:])))
    return registry.publish(model, manifest, state, version=version)
