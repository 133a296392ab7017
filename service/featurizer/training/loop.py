"""The training loop: mini-batch SGD on model-ready tensors, seeded, with a tqdm progress bar.

Inputs are what the served model receives: uint8 images normalised with the manifest's mean/std
(``inference.normalize.Normalizer``), or the backbone's cached feature maps for heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True
    threads: int = 1   # small models gain nothing from intra-op threads; 1 also makes runs machine-independent


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: Optional[float]
    val_accuracy: Optional[float]


@dataclass
class History:
    """Per-epoch figures and the final validation confusion matrix (rows: true, columns: predicted)."""

    epochs: list[EpochStats] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)


Prepare = Callable[[torch.Tensor], torch.Tensor]  # stored inputs of a batch -> the model's input


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, then restore the process's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, val_inputs: torch.Tensor,
          val_targets: torch.Tensor, num_classes: int, settings: TrainSettings,
          prepare: Prepare = lambda x: x) -> History:
    """Adam on cross-entropy; the same seed gives the same weights and the same history."""
    with torch_threads(settings.threads):
        return _train(model, inputs, targets, val_inputs, val_targets, num_classes, settings, prepare)


def _train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, val_inputs: torch.Tensor,
           val_targets: torch.Tensor, num_classes: int, settings: TrainSettings, prepare: Prepare) -> History:
    torch.manual_seed(settings.seed)
    shuffle = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    batches = (len(targets) + settings.batch_size - 1) // settings.batch_size
    with tqdm(total=settings.epochs * batches, disable=not settings.progress, unit="batch", desc="train") as bar:
        for epoch in range(1, settings.epochs + 1):
            model.train()
            total_loss, correct = 0.0, 0
            for index in torch.randperm(len(targets), generator=shuffle).split(settings.batch_size):
                logits = model(prepare(inputs[index]))
                loss = loss_fn(logits, targets[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total_loss += loss.item() * len(index)
                correct += int((logits.argmax(1) == targets[index]).sum())
                bar.update(1)
            val_loss, val_accuracy, history.confusion = evaluate(model, val_inputs, val_targets, num_classes, prepare)
            stats = EpochStats(epoch, total_loss / len(targets), correct / len(targets), val_loss, val_accuracy)
            history.epochs.append(stats)
            bar.set_postfix(loss=f"{stats.train_loss:.4f}", acc=f"{stats.train_accuracy:.3f}",
                            val_acc="-" if val_accuracy is None else f"{val_accuracy:.3f}")
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int,
             prepare: Prepare = lambda x: x, batch_size: int = 512) -> tuple[Optional[float], Optional[float], list[list[int]]]:
    """(mean loss, accuracy, confusion matrix) in eval mode; (None, None, []) for no data."""
    if len(targets) == 0:
        return None, None, []
    model.eval()
    logits = torch.cat([model(prepare(inputs[i:i + batch_size])) for i in range(0, len(targets), batch_size)])
    loss = nn.functional.cross_entropy(logits, targets).item()
    predicted = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    return loss, float((predicted == targets).float().mean()), confusion.tolist()
