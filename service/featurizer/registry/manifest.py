"""``model.json``: the manifest of one model version, parsed into frozen pydantic dataclasses.

The manifest is data, never code. Pydantic checks the types and bounds; each field's type carries
the sentence an operator reads when it is wrong, and ``parse_manifest`` turns every failure into one
``ManifestError`` naming the file, the field and the value, so a FAILED version says what to fix.
The same classes publish the JSON Schema of model.json (``python -m featurizer.registry.manifest
--schema`` writes docs/model.schema.json).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, ValidationInfo, WrapValidator
from pydantic import model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails, PydanticCustomError


class Kind(StrEnum):
    """What a model returns: feature vectors/maps, labels on its own, or labels from a backbone's features."""

    FEATURES = "features"
    CLASSIFIER = "classifier"
    HEAD = "head"


class InputMode(StrEnum):
    """How an image is sized for the network (see ``InputSpec``)."""

    RESIZE_CROP = "resize_crop"
    RESIZE = "resize"
    NATIVE = "native"


class DecodeMode(StrEnum):
    """How a JPEG is decoded: ``exact`` gives torchvision's preset numbers; ``fast`` lets libjpeg
    decode at 1/2, 1/4 or 1/8 scale when the resize needs no more (a few times faster on phone
    photos, embeddings within the cosines in docs/performance.md)."""

    EXACT = "exact"
    FAST = "fast"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST_FILE = "model.json"
_FIELD_ERROR = "manifest_field"  # a field's value is wrong: the message is what it must be
_RULE_ERROR = "manifest_rule"    # a rule across fields is broken: the message is the whole sentence
_FROM_FILE = "model.json"        # validation context: read from a file, not built in Python


class ManifestError(ValueError):
    """A model.json that is not valid JSON or breaks a rule; the message names the field."""


def _expect(sentence: str) -> WrapValidator:
    """Replace pydantic's wording ('Input should be greater than 0') by what the field must be."""
    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(_FIELD_ERROR, sentence) from None
    return WrapValidator(check)


def _rule(sentence: str) -> PydanticCustomError:
    return PydanticCustomError(_RULE_ERROR, sentence)


def _one_of(enum: type[StrEnum]) -> str:
    return "must be one of " + ", ".join(member.value for member in enum)


PositiveInt = Annotated[int, Field(strict=True, gt=0), _expect("must be a positive integer")]
Dimension = Union[Annotated[int, Field(strict=True, gt=0)], Literal[-1]]
Name = Annotated[str, Field(strict=True, min_length=1)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0)]


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input: resize/crop sizes, then mean/std on the device.
    Sizes left out are torchvision's ImageNet preset (resize 256, crop 224); resize_crop needs
    'resize' at least the crop's short side; native inputs take no sizes."""

    mode: Annotated[InputMode, _expect(_one_of(InputMode))] = InputMode.RESIZE_CROP
    resize: Optional[PositiveInt] = 256  # resize_crop: short side before the centre crop
    height: Optional[PositiveInt] = 224  # resize_crop: crop; resize: target; native: unused
    width: Optional[PositiveInt] = 224
    mean: Annotated[tuple[FiniteFloat, FiniteFloat, FiniteFloat],
                    _expect("must be 3 finite numbers")] = IMAGENET_MEAN
    std: Annotated[tuple[PositiveFloat, PositiveFloat, PositiveFloat],
                   _expect("must be 3 positive numbers")] = IMAGENET_STD
    decode: Annotated[DecodeMode, _expect(_one_of(DecodeMode))] = DecodeMode.EXACT

    @model_validator(mode="before")
    @classmethod
    def _sizes_of_the_mode(cls, data: Any) -> Any:
        """A decoded input object keeps only the sizes its mode uses (the others are ignored)."""
        if isinstance(data, dict):
            unused = {"native": ("resize", "height", "width"), "resize": ("resize",)}.get(str(data.get("mode")), ())
            data = {**data, **{name: None for name in unused}}
        return data

    @model_validator(mode="after")
    def _sizes_fit(self) -> "InputSpec":
        needed = {InputMode.RESIZE_CROP: ("resize", "height", "width"), InputMode.RESIZE: ("height", "width")}
        for name in needed.get(self.mode, ()):
            if getattr(self, name) is None:
                raise _rule(f"'input.{name}' must be a positive integer, got None")
        short = min(self.height or 0, self.width or 0)  # both set when the mode crops (just checked)
        if self.mode is InputMode.RESIZE_CROP and (self.resize or 0) < short:
            raise _rule(f"'input.resize' ({self.resize}) must be at least the crop's short side ({short})")
        return self

    @property
    def target(self) -> tuple[int, int]:
        """(H, W) a resize or resize_crop model takes; ManifestError for a native-size one."""
        if self.height is None or self.width is None:
            raise ManifestError(f"input mode {self.mode} has no fixed size")
        return self.height, self.width

    @property
    def short_side(self) -> int:
        """The short side a resize_crop model resizes to before cropping; ManifestError otherwise."""
        if self.resize is None:
            raise ManifestError(f"input mode {self.mode} does not resize the short side")
        return self.resize

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """(H, W) of every input, or None for native inputs (any size)."""
        if self.mode is InputMode.NATIVE or self.height is None or self.width is None:
            return None  # sizes are required by every other mode (checked above)
        return self.height, self.width


@dataclass(frozen=True)
class BackboneRef:
    """The features model (pinned version) a head sits on: heads are trained on its features."""

    model: Annotated[Name, _expect("must name a model")]
    version: PositiveInt


@dataclass(frozen=True, config={"json_schema_extra": {"required": ["sha256"]}})  # in a file; see _rules
class WeightsRef:
    """The weights file inside the version directory and its sha256 (publishing computes it)."""

    file: Annotated[str, Field(strict=True, pattern=r"^[^./\\][^/\\]*\.safetensors$"),
                    _expect("must be a .safetensors file name inside the version directory")] = "weights.safetensors"
    sha256: Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$"),
                      _expect("must be 64 lowercase hex digits")] = ""  # "": not published yet


@dataclass(frozen=True)
class OutputSpec:
    """Per-image output shape (-1 where it depends on input size; empty: not checked) and label names."""

    shape: Annotated[tuple[Dimension, ...], _expect("must be a list of positive integers (or -1)")] = ()
    labels: Annotated[tuple[Annotated[str, Field(strict=True)], ...], _expect("must be a list of strings")] = ()


@dataclass(frozen=True)
class BatchingSpec:
    """Per-model overrides of the server-wide batching flags (None = use the flag)."""

    max_batch_size: Optional[PositiveInt] = None
    max_delay_ms: Optional[Annotated[float, Field(strict=True, ge=0), _expect("must be >= 0")]] = None


def _schema_rules(schema: dict[str, Any]) -> None:
    """The cross-field rules, stated in the published schema too (the validators enforce them)."""
    schema["required"] = ["kind", "architecture", "weights"]
    del schema["properties"]["weights"]["default"]  # required in a file: only Python code may leave it out
    is_head = {"required": ["kind"], "properties": {"kind": {"const": Kind.HEAD.value}}}
    schema["allOf"] = [
        {"if": is_head, "then": {"required": ["backbone"], "properties": {"backbone": {"type": "object"}}}, "else": {"properties": {"backbone": {"type": "null"}}}},
        {"if": {"required": ["kind"], "properties": {"kind": {"enum": [Kind.CLASSIFIER.value, Kind.HEAD.value]}}},
         "then": {"required": ["output"], "properties": {"output": {"required": ["labels"],
                                                                    "properties": {"labels": {"minItems": 1}}}}}},
    ]


@dataclass(frozen=True, config={"title": "model.json", "json_schema_extra": _schema_rules})
class Manifest:
    """The manifest of one model version: what it is, how to build and feed it, where its weights are."""

    kind: Annotated[Kind, _expect(_one_of(Kind))]
    architecture: Annotated[Name, _expect("must name a builder")]
    params: Annotated[dict[str, Any], _expect("must be an object")] = field(default_factory=dict)
    input: InputSpec = InputSpec()  # heads: their backbone's input is used, this one is ignored
    backbone: Optional[BackboneRef] = None
    output: OutputSpec = OutputSpec()
    weights: WeightsRef = WeightsRef()
    batching: BatchingSpec = BatchingSpec()
    description: Annotated[str, BeforeValidator(str)] = ""

    @model_validator(mode="before")
    @classmethod
    def _heads_take_their_backbones_input(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == Kind.HEAD:
            data = {k: v for k, v in data.items() if k != "input"}
        return data

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> "Manifest":
        if self.kind is Kind.HEAD and self.backbone is None:
            raise _rule("a head needs 'backbone': {'model': name, 'version': n}, got None")
        if self.kind is not Kind.HEAD and self.backbone is not None:
            raise _rule(f"only heads have a 'backbone'; this is a {self.kind.value!r} model")
        if self.kind is not Kind.FEATURES and not self.output.labels:
            raise _rule(f"a {self.kind.value} model needs 'output.labels'")
        if info.context == _FROM_FILE and not self.weights.sha256:  # built in Python: publishing computes it
            raise _rule("'weights.sha256' must be 64 lowercase hex digits, got ''")
        return self

    def head_backbone(self) -> BackboneRef:
        """A head's backbone; parsing refuses a head without one, so this fails only for other kinds."""
        if self.backbone is None:
            raise ManifestError(f"a {self.kind} model has no 'backbone'")
        return self.backbone

    def to_json(self) -> str:
        data = asdict(self)
        data["params"] = dict(self.params)
        if self.backbone is None:
            del data["backbone"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


_ADAPTER = TypeAdapter(Manifest)


def parse_manifest(raw: Any, where: str = "model.json") -> Manifest:
    """Validate a decoded model.json. ``where`` prefixes every error (e.g. 'alexnet/2/model.json')."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: the manifest must be a JSON object")
    try:
        return _ADAPTER.validate_python(raw, context=_FROM_FILE)
    except ValidationError as error:
        raise ManifestError(f"{where}: " + "; ".join(_describe(e) for e in error.errors())) from None


def _describe(error: ErrorDetails) -> str:
    """One pydantic error as a sentence naming the field ('input.height') and the value."""
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == _RULE_ERROR:
        return error["msg"]
    if error["type"] == "missing":
        return f"'{name}' is missing"
    got = repr(error["input"])
    got = got if len(got) <= 200 else got[:197] + "..."
    if error["type"] == _FIELD_ERROR:
        return f"'{name}' {error['msg']}, got {got}"
    if error["type"] in ("dataclass_type", "dict_type", "model_type"):
        return f"'{name}' must be an object, got {got}"
    return f"'{name}': {error['msg'][:1].lower()}{error['msg'][1:]}, got {got}"


def load_manifest(path: Path, where: str | None = None) -> Manifest:
    where = where or str(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{where}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where}: not valid JSON ({error})") from None
    return parse_manifest(raw, where)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of model.json, generated from the classes above (docs/model.schema.json)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_ADAPTER.json_schema()}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m featurizer.registry.manifest",
                                     description="Print the JSON Schema of model.json.")
    parser.add_argument("--schema", action="store_true", required=True, help="print the JSON Schema")
    parser.parse_args(argv)
    print(schema_text(), end="")


if __name__ == "__main__":
    main()
