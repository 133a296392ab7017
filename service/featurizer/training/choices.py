"""What ``featurizer train`` can train, and defaults that train each well in seconds on a CPU.

Torch-free, so the CLI can offer the choices in ``--help`` without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Trainable(StrEnum):
    """Architectures ``featurizer train`` builds and publishes."""

    LARGENET = "largenet"
    FEATURE_HEAD = "feature_head"


@dataclass(frozen=True)
class TrainingDefaults:
    epochs: int
    batch_size: int
    learning_rate: float


# See docs/training.md for the figures behind these (heads train on cached features: epochs are cheap).
DEFAULTS: dict[Trainable, TrainingDefaults] = {
    Trainable.LARGENET: TrainingDefaults(epochs=3, batch_size=128, learning_rate=3e-3),
    Trainable.FEATURE_HEAD: TrainingDefaults(epochs=100, batch_size=16, learning_rate=1e-2),
}
