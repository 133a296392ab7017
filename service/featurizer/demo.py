"""The demo registry: seeded random AlexNet weights in torchvision's layout, so the first run
needs no download. (No real ImageNet weights are available offline; see ``registry
import-torchvision`` for them on a connected machine.)"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.models import alexnet as tv_alexnet

from featurizer.registry.manifest import InputSpec, Kind, Manifest, OutputSpec
from featurizer.registry.registry import Registry
from featurizer.registry.files import make_dirs

log = logging.getLogger(__name__)
DEMO_SEED = 0
FASHION_DEMO_MODEL = "fashion-shoes"      # LargeNet: Sneaker vs Ankle boot
FASHION_DEMO_CLASSES = (7, 9)
FASHION_DEMO_PER_CLASS = 3000            # 6,000 images, 2 epochs: ~2 s of one CPU core, ~96% on t10k


def seeded_alexnet(seed: int = DEMO_SEED) -> torch.nn.Module:
    """torchvision's AlexNet with its default initialisation under a fixed seed."""
    torch.manual_seed(seed)
    return tv_alexnet(weights=None)


def alexnet_features_manifest(layer: str = "pool5", pooling: str = "flatten",
                              input: InputSpec = InputSpec(), shape: tuple[int, ...] = (9216,)) -> Manifest:
    return Manifest(kind=Kind.FEATURES, architecture="alexnet_features",
                    params={"layer": layer, "pooling": pooling}, input=input, output=OutputSpec(shape=shape),
                    description="torchvision AlexNet `features` (seeded demo weights)")


def features_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the ``features.*`` tensors, under torchvision's names."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def init_demo(root: Path, seed: int = DEMO_SEED) -> Registry:
    """Write the demo registry: ``alexnet`` (features, 224x224 -> 9216), aliases, and the
    Fashion-MNIST LargeNet when the dataset is installed."""
    registry = Registry(root)
    make_dirs(root)  # 0755 whatever the umask: the server may run as another user
    if not (root / "alexnet").exists():
        registry.publish("alexnet", alexnet_features_manifest(), features_state(seeded_alexnet(seed)), version=1)
    registry.set_alias("alexnet-pool5", "alexnet")
    if not (root / FASHION_DEMO_MODEL).exists():
        publish_fashion_demo(root, seed)
    return registry


def publish_fashion_demo(root: Path, seed: int = DEMO_SEED) -> None:
    """A LargeNet trained on Fashion-MNIST Sneaker vs Ankle boot, so the demo predicts something
    real; skipped (with a log line) when the Debian dataset-fashion-mnist package is missing."""
    from featurizer.training.datasets import fashion_mnist_available
    from featurizer.training.loop import TrainSettings
    from featurizer.training.run import TrainJob, run

    if not fashion_mnist_available():
        log.info("demo: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); "
                 "no %s model", FASHION_DEMO_MODEL)
        return
    settings = TrainSettings(epochs=2, batch_size=64, learning_rate=3e-3, seed=seed, progress=False)
    run(TrainJob(registry=root, name=FASHION_DEMO_MODEL, architecture="largenet", classes=FASHION_DEMO_CLASSES,
                 per_class=FASHION_DEMO_PER_CLASS, val_fraction=0.1, settings=settings))
