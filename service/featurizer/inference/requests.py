"""What the engine is asked for and answers with, in its own terms (no protobuf, no SDK types).

The transports map their messages onto these (``featurizer.rpc.convert`` for featurizer.v1,
``featurizer.rpc.oip.infer`` for the Open Inference Protocol), so renaming a field of the SDK or
of a .proto changes a mapping, never the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OutputDType(StrEnum):
    """The element type of returned features (the forward pass itself runs in --precision)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


@dataclass(frozen=True)
class EmbedOptions:
    """Which features to return: a layer at or before the model's cut ("" = the cut), a pooling
    ("" = the model's own), L2-normalised rows or not, and the output element type."""

    layer: str = ""
    pooling: str = ""
    normalize: bool = False
    dtype: OutputDType = OutputDType.FLOAT32


@dataclass(frozen=True)
class ClassScore:
    """One class of one image's ranking: its label, its index in the model's labels, its probability."""

    label: str
    index: int
    probability: float
