"""The report's figures: throughput vs concurrency, latency percentiles per load, and the phone photos
(images/s and a lone caller's latency by system and decode mode)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import photos  # noqa: E402


def draw(results: dict, docs_dir: Path) -> list[Path]:
    figures = [_throughput(results, docs_dir / "performance-throughput.png"),
               _latency(results, docs_dir / "performance-latency.png")]
    if results["config"].get("phone_concurrency"):
        figures.append(_phone(results, docs_dir / "performance-phone.png"))
    return figures


def _median_over_rounds(results: dict, name: str, label: str, key) -> float | None:
    values = [key(rnd[name]["loads"][label]) for rnd in results["rounds"]
              if label in rnd.get(name, {}).get("loads", {}) and "failed" not in rnd[name]["loads"][label]]
    return statistics.median(values) if values else None


def _throughput(results: dict, path: Path) -> Path:
    concurrency = results["config"]["concurrency"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(n for rnd in results["rounds"] for n, r in rnd.items()
                               if any(f"c{c}" in r.get("loads", {}) for c in concurrency)))
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
    for ax, q in zip(axes, ("p50", "p95", "p99"), strict=True):
        for k, name in enumerate(names):
            ys = [_median_over_rounds(results, name, label, lambda l, q=q: l["latency_ms"][q]) for label in labels]
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


def _median_of_limit(results: dict, mode: str, key) -> float | None:
    values = [key(rnd[photos.PHONE_LIMIT][mode]) for rnd in results["rounds"]
              if rnd.get(photos.PHONE_LIMIT, {}).get(mode, {}).get("best")]
    return statistics.median(values) if values else None


def _phone(results: dict, path: Path) -> Path:
    """Phone photos: images/s at N callers (the limit: its best batch) and p50 at 1 caller (the
    limit: batch 1), featurizer beside the in-process limit, per decode mode."""
    n = results["config"]["phone_concurrency"]
    panels = (
        (f"images/s, {n} callers (limit: best batch)", "images/s (median over rounds)",
         lambda mode: _median_of_limit(results, mode, lambda r: r["best"]["images_per_s"]),
         lambda mode: _median_over_rounds(results, "featurizer", photos.phone_label(mode, n),
                                          lambda l: l["images_per_s"])),
        ("p50 latency, 1 caller (limit: batch 1)", "ms (median over rounds)",
         lambda mode: _median_of_limit(results, mode, lambda r: r["batch1"]["latency_ms"]["p50"]),
         lambda mode: _median_over_rounds(results, "featurizer", photos.phone_label(mode, 1),
                                          lambda l: l["latency_ms"]["p50"])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    width = 0.38
    for ax, (title, ylabel, limit, featurizer) in zip(axes, panels, strict=True):
        for k, (name, value) in enumerate((("limit (in-process)", limit), ("featurizer", featurizer))):
            ys = [value(mode) or 0 for mode in photos.MODES]
            bars = ax.bar([i + k * width for i in range(len(photos.MODES))], ys, width, label=name)
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks([i + width / 2 for i in range(len(photos.MODES))], [f"{m} decode" for m in photos.MODES])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle("AlexNet features on 4032x3024 phone photos")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
