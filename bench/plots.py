"""The report's two figures: throughput vs concurrency, and latency percentiles per load."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def draw(results: dict, docs_dir: Path) -> list[Path]:
    return [_throughput(results, docs_dir / "performance-throughput.png"),
            _latency(results, docs_dir / "performance-latency.png")]


def _median_over_rounds(results: dict, name: str, label: str, key) -> float | None:
    values = [key(rnd[name]["loads"][label]) for rnd in results["rounds"]
              if label in rnd.get(name, {}).get("loads", {}) and "failed" not in rnd[name]["loads"][label]]
    return statistics.median(values) if values else None


def _throughput(results: dict, path: Path) -> Path:
    concurrency = results["config"]["concurrency"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(n for rnd in results["rounds"] for n, r in rnd.items() if "loads" in r and n != "echo"))
    for name in names:
        ys = [_median_over_rounds(results, name, f"c{c}", lambda l: l["images_per_s"]) for c in concurrency]
        ax.plot(concurrency, [y if y is not None else float("nan") for y in ys], marker="o", label=name)
    limits = [rnd["limit"]["best"]["images_per_s"] for rnd in results["rounds"] if rnd.get("limit", {}).get("best")]
    if limits:
        ax.axhline(statistics.median(limits), color="black", linestyle="--", label="limit (in-process, best batch)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrency, [str(c) for c in concurrency])
    ax.set_xlabel("closed-loop callers (1 image per request)")
    ax.set_ylabel("images/s (median over rounds)")
    ax.set_title("AlexNet features: throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency(results: dict, path: Path) -> Path:
    names = list(dict.fromkeys(n for rnd in results["rounds"] for n, r in rnd.items() if "loads" in r))
    labels = list(dict.fromkeys(l for rnd in results["rounds"] for r in rnd.values() for l in r.get("loads", {})))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5), sharey=True)
    width = 0.8 / max(1, len(names))
    for ax, q in zip(axes, ("p50", "p95", "p99")):
        for k, name in enumerate(names):
            ys = [_median_over_rounds(results, name, label, lambda l: l["latency_ms"][q]) for label in labels]
            ax.bar([i + k * width for i in range(len(labels))], [y or 0 for y in ys], width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(labels))], labels, rotation=30)
        ax.set_yscale("log")
        ax.set_title(f"{q} latency")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("ms (median over rounds, log scale)")
    if names:
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
