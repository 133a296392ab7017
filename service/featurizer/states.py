"""The states of a loaded model version: one closed set, shared by serving, metrics and the wire.

A foundation module (no torch, no grpc), so ``metrics`` labels its state series with the same
members that ``inference.loading`` assigns and ``rpc.convert`` maps to featurizer.v1's enum.
"""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    LOADING = "LOADING"      # manifest, weights and warm-up under way; calls go to another version
    AVAILABLE = "AVAILABLE"  # serving
    FAILED = "FAILED"        # could not load; the version's reason says why
    UNLOADING = "UNLOADING"  # removed from the registry; calls in flight finish
