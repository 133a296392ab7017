"""What a training run leaves beside its version: ``report.json`` and ``curves.png``."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any, Mapping

from featurizer.training.loop import History

REPORT_FILE = "report.json"
CURVES_FILE = "curves.png"


def report_json(history: History, classes: tuple[str, ...], details: Mapping[str, Any]) -> bytes:
    """Per-epoch loss/accuracy, the validation confusion matrix and how the run was set up."""
    report = {**details, "classes": list(classes), "epochs": [asdict(e) for e in history.epochs],
              "confusion_matrix": {"rows": "true class", "columns": "predicted class", "matrix": history.confusion}}
    return (json.dumps(report, indent=2) + "\n").encode("utf-8")


def curves_png(history: History, title: str) -> bytes:
    """Loss and accuracy per epoch, training and validation, as a PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [e.epoch for e in history.epochs]
    figure = Figure(figsize=(9, 3.5), dpi=100)
    for axes, name in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        axes.plot(epochs, [getattr(e, f"train_{name}") for e in history.epochs], "o-", label="train")
        val = [getattr(e, f"val_{name}") for e in history.epochs]
        if all(v is not None for v in val):
            axes.plot(epochs, val, "s-", label="validation")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
