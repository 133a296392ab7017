"""One figure out of one system's results in a round: images/s or p50 of a load, and their ratios.

Missing figures (a system skipped, a load failed, nothing completed) are None, and a ratio of a
None is None, so a partial run still reports every ratio it can."""

from __future__ import annotations

from typing import Optional


def ips(result: dict, label: str) -> Optional[float]:
    load = result.get("loads", {}).get(label, {})
    return load.get("images_per_s") or None


def p50(result: dict, label: str, kind: Optional[str] = None) -> Optional[float]:
    """A load's p50 latency in ms; of its ``kind`` requests only (``by_kind``) when given."""
    load = result.get("loads", {}).get(label, {})
    if kind is not None:
        load = load.get("by_kind", {}).get(kind, {})
    return load.get("latency_ms", {}).get("p50") if load.get("requests") else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None
