"""``model.json``: the manifest of one model version, parsed into frozen dataclasses.

The manifest is data, never code. Every check names the field and the value that was wrong,
so a FAILED version tells its operator exactly what to fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

KINDS = ("features", "classifier", "head")
INPUT_MODES = ("resize_crop", "resize", "native")
POOLINGS = ("flatten", "avg", "max", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST_FILE = "model.json"


class ManifestError(ValueError):
    """A model.json that is not valid JSON or breaks a rule; the message names the field."""


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input: resize/crop sizes, then mean/std on the device."""

    mode: str = "resize_crop"
    resize: Optional[int] = 256          # resize_crop: short side before the centre crop
    height: Optional[int] = 224          # resize_crop: crop; resize: target; native: unused
    width: Optional[int] = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """(H, W) of every input, or None for native inputs (any size)."""
        return None if self.mode == "native" else (int(self.height), int(self.width))


@dataclass(frozen=True)
class BackboneRef:
    """The features model (pinned version) a head sits on: heads are trained on its features."""

    model: str
    version: int


@dataclass(frozen=True)
class WeightsRef:
    file: str = "weights.safetensors"
    sha256: str = ""


@dataclass(frozen=True)
class OutputSpec:
    """Per-image output shape (-1 where it depends on input size) and label names."""

    shape: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchingSpec:
    """Per-model overrides of the server-wide batching flags (None = use the flag)."""

    max_batch_size: Optional[int] = None
    max_delay_ms: Optional[float] = None


@dataclass(frozen=True)
class Manifest:
    kind: str
    architecture: str
    params: Mapping[str, Any] = field(default_factory=dict)
    input: InputSpec = InputSpec()
    backbone: Optional[BackboneRef] = None
    output: OutputSpec = OutputSpec()
    weights: WeightsRef = WeightsRef()
    batching: BatchingSpec = BatchingSpec()
    description: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["params"] = dict(self.params)
        if self.backbone is None:
            del data["backbone"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ManifestError(f"{where}: {message}")


def _positive_int(value: Any, where: str, name: str, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, where,
             f"'{name}' must be a positive integer, got {value!r}")
    return int(value)


def _parse_input(raw: Any, where: str) -> InputSpec:
    _require(isinstance(raw, dict), where, f"'input' must be an object, got {raw!r}")
    mode = raw.get("mode", "resize_crop")
    _require(mode in INPUT_MODES, where, f"'input.mode' must be one of {', '.join(INPUT_MODES)}, got {mode!r}")
    mean = tuple(raw.get("mean", IMAGENET_MEAN))
    std = tuple(raw.get("std", IMAGENET_STD))
    _require(len(mean) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean), where,
             f"'input.mean' must be 3 finite numbers, got {list(mean)!r}")
    _require(len(std) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in std), where,
             f"'input.std' must be 3 positive numbers, got {list(std)!r}")
    if mode == "native":
        return InputSpec(mode=mode, resize=None, height=None, width=None, mean=mean, std=std)
    default = InputSpec()  # sizes left out: torchvision's ImageNet preset (resize 256, crop 224)
    height = _positive_int(raw.get("height", default.height), where, "input.height")
    width = _positive_int(raw.get("width", default.width), where, "input.width")
    resize = (_positive_int(raw.get("resize", default.resize), where, "input.resize")
              if mode == "resize_crop" else None)
    if resize is not None:
        _require(resize >= min(height, width), where,
                 f"'input.resize' ({resize}) must be at least the crop's short side ({min(height, width)})")
    return InputSpec(mode=mode, resize=resize, height=height, width=width, mean=mean, std=std)


def parse_manifest(raw: Any, where: str = "model.json") -> Manifest:
    """Validate a decoded model.json. ``where`` prefixes every error (e.g. 'alexnet/2/model.json')."""
    _require(isinstance(raw, dict), where, "the manifest must be a JSON object")
    kind = raw.get("kind")
    _require(kind in KINDS, where, f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    architecture = raw.get("architecture")
    _require(isinstance(architecture, str) and architecture != "", where,
             f"'architecture' must name a builder, got {architecture!r}")
    params = raw.get("params", {})
    _require(isinstance(params, dict), where, f"'params' must be an object, got {params!r}")

    backbone = None
    if kind == "head":
        ref = raw.get("backbone")
        _require(isinstance(ref, dict) and isinstance(ref.get("model"), str) and ref["model"] != "", where,
                 f"a head needs 'backbone': {{'model': name, 'version': n}}, got {ref!r}")
        backbone = BackboneRef(model=ref["model"], version=_positive_int(ref.get("version"), where, "backbone.version"))
        spec = InputSpec()  # heads use the backbone's input; kept for display only
    else:
        _require(raw.get("backbone") is None, where, f"only heads have a 'backbone'; this is a {kind!r} model")
        spec = _parse_input(raw.get("input", {}), where)

    out = raw.get("output", {})
    _require(isinstance(out, dict), where, f"'output' must be an object, got {out!r}")
    shape = out.get("shape", [])
    _require(isinstance(shape, list) and all(isinstance(d, int) and (d > 0 or d == -1) for d in shape), where,
             f"'output.shape' must be a list of positive integers (or -1), got {shape!r}")
    labels = out.get("labels", [])
    _require(isinstance(labels, list) and all(isinstance(x, str) for x in labels), where,
             f"'output.labels' must be a list of strings, got {type(labels).__name__}")
    _require(kind == "features" or labels, where, f"a {kind} model needs 'output.labels'")

    weights = raw.get("weights", {})
    _require(isinstance(weights, dict), where, f"'weights' must be an object, got {weights!r}")
    wfile = weights.get("file", "weights.safetensors")
    _require(isinstance(wfile, str) and wfile.endswith(".safetensors") and "/" not in wfile and "\\" not in wfile
             and not wfile.startswith("."), where,
             f"'weights.file' must be a .safetensors file name inside the version directory, got {wfile!r}")
    sha = weights.get("sha256", "")
    _require(isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha), where,
             f"'weights.sha256' must be 64 lowercase hex digits, got {sha!r}")

    batching = raw.get("batching", {})
    _require(isinstance(batching, dict), where, f"'batching' must be an object, got {batching!r}")
    max_batch = _positive_int(batching.get("max_batch_size"), where, "batching.max_batch_size", optional=True)
    delay = batching.get("max_delay_ms")
    _require(delay is None or (isinstance(delay, (int, float)) and delay >= 0), where,
             f"'batching.max_delay_ms' must be >= 0, got {delay!r}")

    return Manifest(
        kind=kind, architecture=architecture, params=dict(params), input=spec, backbone=backbone,
        output=OutputSpec(shape=tuple(shape), labels=tuple(labels)),
        weights=WeightsRef(file=wfile, sha256=sha),
        batching=BatchingSpec(max_batch_size=max_batch, max_delay_ms=delay),
        description=str(raw.get("description", "")),
    )


def load_manifest(path: Path, where: str | None = None) -> Manifest:
    where = where or str(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{where}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where}: not valid JSON ({error})") from None
    return parse_manifest(raw, where)
