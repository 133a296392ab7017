"""``report.json`` and ``report.md`` for bench/gpu_check.py: the figures, the ratios the GPU work
is judged by (docs/gpu.md's targets), and every stage's error or "not run" reason as it came."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

NO_CUDA = "not run: no CUDA"
TARGET_THROUGHPUT = 0.85   # featurizer / limit at 256 callers, GPU decoding
TARGET_LONE = 1.3          # lone caller p50 / the limit's batch-1 latency


def _run(report: dict, decode: str, concurrency: int, batch: int = 1) -> Optional[dict]:
    for run in report.get("serve", {}).get("runs", []):
        if run.get("decode") == decode and run.get("concurrency") == concurrency and run.get("batch") == batch:
            return run
    return None


def ratios(report: dict) -> dict[str, Any]:
    """featurizer / limit at each caller count, and the lone caller vs the limit's batch-1 latency."""
    limit = report.get("limit", {})
    out: dict[str, Any] = {}
    for decode in ("cpu", "cuda"):
        best = (limit.get("best") or {}).get(decode)
        batch1 = (limit.get("batch1") or {}).get(decode)
        for n in report.get("settings", {}).get("callers", []):
            run = _run(report, decode, n)
            key = f"decode_{decode}_c{n}_vs_limit"
            out[key] = run["images_per_s"] / best["images_per_s"] if run and best else NO_CUDA if decode == "cuda" and report.get("device") != "cuda" else "not measured"
        lone = _run(report, decode, 1)
        key = f"decode_{decode}_lone_p50_vs_limit_batch1"
        out[key] = lone["latency_ms"]["p50"] / batch1["latency_ms"]["p50"] if lone and batch1 else NO_CUDA if decode == "cuda" and report.get("device") != "cuda" else "not measured"
    rates = limit.get("decode_rates", {})
    for name, pair in rates.items():
        cpu, gpu = pair.get("cpu"), pair.get("cuda")
        out[f"decode_{name}_gpu_vs_cpu"] = gpu["images_per_s"] / cpu["images_per_s"] if isinstance(gpu, dict) and cpu else NO_CUDA
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(report: dict) -> str:
    r = ratios(report)
    lines = [f"# GPU check ({report.get('device')}{', quick' if report.get('quick') else ''}, {report.get('started')})", ""]
    env = report.get("env", {})
    lines += ["## Machine", "", *(f"- {k}: {_fmt(v)}" for k, v in env.items()), ""]
    tests = report.get("tests", {})
    lines += ["## Tests on the device", "", f"- {tests.get('summary', tests.get('error', tests.get('result', '')))} "
              f"(exit {tests.get('exit_code', '-')}, device {tests.get('device', '-')})", ""]
    lines += ["## Embeddings vs the CPU fp32 reference", "", "| precision | decode | max rel diff | min cosine | ok |",
              "|---|---|---|---|---|"]
    for row in report.get("embeddings", {}).get("rows", []):
        lines.append(f"| {row['precision']} | {row['decode']} | {_fmt(row.get('max_rel_diff', row.get('result')))} | "
                     f"{_fmt(row.get('min_cosine', '-'))} | {_fmt(row.get('ok', '-'))} |")
    if "error" in report.get("embeddings", {}):
        lines.append(f"\nerror: {report['embeddings']['error']}")
    limit = report.get("limit", {})
    lines += ["", "## In-process limit", "", "| decode | precision | batch | images/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for c in limit.get("configs", []):
        lat = c.get("latency_ms", {})
        lines.append(f"| {c['decode']} | {c['precision']} | {c['batch']} | {_fmt(c.get('images_per_s', c.get('result')))} | "
                     f"{_fmt(lat.get('p50', '-'))} | {_fmt(lat.get('p99', '-'))} |")
    lines += ["", f"GPU memory peak (limit): {_fmt(limit.get('gpu_memory_peak_bytes', limit.get('error', '-')))}", ""]
    lines += ["## Decode rates (decode + resize/crop only)", "", "| payloads | CPU images/s | GPU images/s |", "|---|---|---|"]
    for name, pair in limit.get("decode_rates", {}).items():
        gpu = pair.get("cuda")
        lines.append(f"| {name} | {_fmt(pair['cpu']['images_per_s'])} | "
                     f"{_fmt(gpu['images_per_s'] if isinstance(gpu, dict) else gpu)} |")
    lines += ["", "## featurizer serve", "", "| decode | callers | images/request | images/s | p50 ms | p99 ms | errors | "
              "device memory | nvidia-smi |", "|---|---|---|---|---|---|---|---|---|"]
    for run in report.get("serve", {}).get("runs", []):
        if "images_per_s" not in run:
            lines.append(f"| {run['decode']} | {run.get('result', '')} | | | | | | | |")
            continue
        lat = run["latency_ms"]
        lines.append(f"| {run['decode']} | {run['concurrency']} | {run['batch']} | {_fmt(run['images_per_s'])} | "
                     f"{_fmt(lat['p50'])} | {_fmt(lat['p99'])} | {run['errors'] or 0} | {_fmt(run['device_memory_bytes'])} | "
                     f"{_fmt(run['nvidia_smi'])} |")
    lines += ["", "## Ratios", "", f"Targets: featurizer >= {TARGET_THROUGHPUT}x the limit at 256 callers with GPU decoding; "
              f"lone caller p50 <= {TARGET_LONE}x the limit's batch-1 latency.", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in r.items()]
    errors = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    if errors or "error" in report:
        lines += ["", "## Errors", "", *(f"- {k}: {v}" for k, v in errors.items())]
        if "error" in report:
            lines.append(f"- run: {report['error']}")
    lines += ["", f"Stage seconds: {report.get('stage_seconds', {})}", ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    full = {**report, "ratios": ratios(report)}
    (out / "report.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(full))
