"""One training run, end to end: data -> (backbone features) -> train -> publish a new version.

``largenet`` trains on the images themselves; ``feature_head`` computes the registry backbone's
feature maps once and trains a small head on them. Either way the result is published atomically
with its manifest, labels, sha256, ``report.json`` and ``curves.png``, and a running server picks
it up at its next registry scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from featurizer.architectures import Pooling, build
from featurizer.inference.device import Device
from featurizer.inference.normalize import Normalizer
from featurizer.inference.runner import BackboneRunner
from featurizer.registry.manifest import BackboneRef, InputSpec, Kind, Manifest, OutputSpec
from featurizer.registry.presets import LARGENET_INPUT
from featurizer.registry.registry import Registry
from featurizer.training.backbone import feature_maps, load_module, resolve
from featurizer.training.choices import Trainable
from featurizer.training.datasets import DatasetError, LabelledImages, fashion_mnist, image_folder, split
from featurizer.training.loop import History, TrainSettings, train
from featurizer.training.report import CURVES_FILE, REPORT_FILE, curves_png, report_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    registry: Path
    name: str                                  # the model to publish a new version of
    architecture: str = "largenet"
    data: Optional[Path] = None                # an ImageFolder root; None = Fashion-MNIST
    classes: Sequence[int] = (7, 9)            # Fashion-MNIST classes
    per_class: int = 0                         # Fashion-MNIST images per class (0 = all)
    backbone: str = "alexnet"                  # feature_head: the registry model it sits on
    pooling: Pooling = Pooling.AVG             # feature_head: how the feature map is pooled
    hidden: int = 0                            # feature_head: hidden units (0 = linear)
    val_fraction: float = 0.2
    settings: TrainSettings = field(default_factory=TrainSettings)


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: int
    history: History
    classes: tuple[str, ...]


def load_data(job: TrainJob, spec: InputSpec) -> LabelledImages:
    if job.data is not None:
        return image_folder(job.data, spec)
    return fashion_mnist(list(job.classes), spec, per_class=job.per_class)


def run(job: TrainJob) -> TrainResult:
    """Train as ``job`` says and publish the result; returns the published version."""
    if job.architecture not in set(Trainable):
        raise DatasetError("arch", f"expected one of {', '.join(Trainable)}, got {job.architecture!r}")
    registry = Registry(job.registry)
    torch.manual_seed(job.settings.seed)
    if job.architecture == "largenet":
        manifest, module, history, classes = _train_largenet(job)
    else:
        manifest, module, history, classes = _train_feature_head(job, registry)
    details = {"name": job.name, "architecture": job.architecture, "params": dict(manifest.params),
               "data": str(job.data) if job.data else f"fashion-mnist classes {list(job.classes)}",
               "seed": job.settings.seed, "epochs_run": job.settings.epochs, "batch_size": job.settings.batch_size,
               "learning_rate": job.settings.learning_rate, "val_fraction": job.val_fraction}
    extra = {REPORT_FILE: report_json(history, classes, details),
             CURVES_FILE: curves_png(history, f"{job.name}: {job.architecture} on {details['data']}")}
    version = registry.publish(job.name, manifest, module.state_dict(), extra_files=extra)
    log.info("published %s/%d (%s, classes %s)", job.name, version, job.architecture, ", ".join(classes))
    return TrainResult(job.name, version, history, classes)


def _train_largenet(job: TrainJob) -> tuple[Manifest, nn.Module, History, tuple[str, ...]]:
    data = load_data(job, LARGENET_INPUT)
    fit, val = split(data, job.val_fraction, job.settings.seed)
    params = {"num_classes": len(data.classes)}
    module = build("largenet", params)
    history = train(module, fit.images, fit.targets, val.images, val.targets, len(data.classes), job.settings,
                    prepare=Normalizer(LARGENET_INPUT))  # the server's own normalisation
    manifest = Manifest(kind=Kind.CLASSIFIER, architecture="largenet", params=params, input=LARGENET_INPUT,
                        output=OutputSpec(shape=(len(data.classes),), labels=data.classes),
                        description=f"LargeNet trained by `featurizer train` on {job.data or 'Fashion-MNIST'}")
    return manifest, module, history, data.classes


def _train_feature_head(job: TrainJob, registry: Registry) -> tuple[Manifest, nn.Module, History, tuple[str, ...]]:
    backbone, version = resolve(registry, job.backbone)
    device = Device.create()  # the server's default device, so features match what it computes
    try:
        module, backbone_manifest = load_module(registry, backbone, version, device)
        data = load_data(job, backbone_manifest.input)
        runner = BackboneRunner(f"{backbone}@{version}", module, device, backbone_manifest.input)
        maps = feature_maps(runner, data.images, progress=job.settings.progress)
    finally:
        device.close()
    cached = LabelledImages(maps, data.targets, data.classes)
    fit, val = split(cached, job.val_fraction, job.settings.seed)
    in_features = maps.shape[1] if job.pooling in (Pooling.AVG, Pooling.MAX) else maps[0].numel()
    params = {"in_features": int(in_features), "num_classes": len(data.classes), "pooling": Pooling(job.pooling).value,
              "hidden": job.hidden, "dropout": 0.0}
    head = build("feature_head", params)
    history = train(head, fit.images, fit.targets, val.images, val.targets, len(data.classes), job.settings)
    manifest = Manifest(kind=Kind.HEAD, architecture="feature_head", params=params,
                        backbone=BackboneRef(backbone, version),
                        output=OutputSpec(shape=(len(data.classes),), labels=data.classes),
                        description=f"feature_head on {backbone}@{version} trained by `featurizer train`")
    return manifest, head, history, data.classes
