"""What each model looks like in the Open Inference Protocol: its input and output tensors,
versions and platform, taken from the manifest and the shapes measured at warm-up.

Every model accepts its images as ONE of three inputs (a request sends exactly one):

- ``images``  BYTES  [N] or [N, 1]  encoded files (JPEG, PNG, ...), preprocessed as the manifest says
- ``pixels``  UINT8  [N, H, W, 3]   decoded RGB, preprocessed (resized, cropped) by the server
- ``tensor``  FP32   [N, 3, H, W]   already preprocessed (H, W fixed by the manifest unless native)

Features models answer ``embeddings`` (FP32 [N, ...]); classifiers and heads answer
``probabilities`` (FP32 [N, classes]) and ``labels`` (BYTES [N, k], the top-k class names, most
probable first).
"""

from __future__ import annotations

from dataclasses import dataclass

from featurizer.inference.errors import FeaturizerError, InvalidArgument
from featurizer.inference.models import ModelManager, ModelVersion
from featurizer.registry.manifest import Kind
from featurizer.states import ModelState

IMAGES, PIXELS, TENSOR = "images", "pixels", "tensor"
EMBEDDINGS, PROBABILITIES, LABELS = "embeddings", "probabilities", "labels"
SERVER_NAME = "featurizer"
# binary_tensor_data: Triton's HTTP extension; parameters: request parameters carry the options.
EXTENSIONS = ("binary_tensor_data", "parameters")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]        # -1 where the size varies (always the batch dimension)

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidArgument(f"input {name[:100]!r} is not an input of model {self.name}; send one of "
                              f"{', '.join(repr(s.name) for s in self.inputs)}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise InvalidArgument(f"output {name[:100]!r} is not an output of model {self.name}; outputs: "
                              f"{', '.join(repr(s.name) for s in self.outputs)}")

    def as_json(self) -> dict:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [s.as_json() for s in self.inputs], "outputs": [s.as_json() for s in self.outputs]}


def parse_version(text: str) -> int:
    """The protocol's version string -> featurizer's version number ("" = the default version)."""
    if text == "":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"model_version: expected a version number such as '1' (or '' for the default), "
                              f"got {text[:40]!r}")
    return int(text)


def is_classifier(mv: ModelVersion) -> bool:
    return mv.loaded_manifest.kind is not Kind.FEATURES


def signature(manager: ModelManager, mv: ModelVersion) -> Signature:
    """The v2 metadata of an AVAILABLE version ``mv``."""
    try:
        spec = manager.backbone_of(mv).loaded_manifest.input  # heads read their backbone's input
    except FeaturizerError:  # the backbone went away: sizes unknown, the rest still true
        spec = None
    h, w = (-1, -1) if spec is None or spec.size is None else spec.size
    inputs = (TensorSpec(IMAGES, "BYTES", (-1,)), TensorSpec(PIXELS, "UINT8", (-1, -1, -1, 3)),
              TensorSpec(TENSOR, "FP32", (-1, 3, h, w)))
    outputs: tuple[TensorSpec, ...]
    if is_classifier(mv):
        outputs = (TensorSpec(PROBABILITIES, "FP32", (-1, len(mv.loaded_manifest.output.labels))),
                   TensorSpec(LABELS, "BYTES", (-1, -1)))
    else:
        outputs = (TensorSpec(EMBEDDINGS, "FP32", (-1, *mv.output_shape)),)
    versions = tuple(str(v.version) for v in manager.all_versions()
                     if v.name == mv.name and v.state is ModelState.AVAILABLE)
    return Signature(mv.name, versions, f"featurizer_{mv.loaded_manifest.kind}", inputs, outputs)
