"""Logging set-up: one JSON object per line (or plain text), and the access-log helper."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("featurizer.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def access_log(**fields: Any) -> None:
    """One line per RPC: method, model, version, images, status, latency_ms, request_id, protocol
    (featurizer.v1, v2-grpc, v2-http), and for a stream ``item_errors`` (per-item failure counts
    by code: a stream that ends OK may hold some)."""
    ACCESS.info("%s %s %s", fields.get("method"), fields.get("status"), fields.get("model", ""),
                extra={"fields": fields})
