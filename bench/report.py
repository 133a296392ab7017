"""Results -> ratios (median and range over rounds) -> JSON, docs/performance.md and PNG plots.

The "where the time goes" section is written by hand from a profile (bench/where_time_goes.md)
and included as is; everything else in the report comes from the run's own figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import photos
from figures import ips, p50, ratio
from systems import CACHE_BYTES, CACHED

BENCH = Path(__file__).resolve().parent
ANALYSIS = BENCH / "where_time_goes.md"
DECODING = BENCH / "decoding.md"  # hand-written: bench/decode_deviation.py's table and what it decided
EARLIER = BENCH / "earlier_runs.md"  # hand-written: figures of earlier runs a reduced run would drop
PYTRITON = BENCH / "peers" / "PYTRITON.md"
PEERS = ("litserve", "pytriton")
V2 = ("v2-grpc", "v2-http")  # featurizer over the Open Inference Protocol, loaded by tritonclient
# The targets, per ratio: (at least, at most); a ratio without one is context only.
TARGETS = {"featurizer/limit c32": (0.95, None), "featurizer/limit c64": (0.95, None),
           "featurizer/naive c32": (2.5, None), "featurizer/naive c64": (2.5, None),
           **{f"featurizer/{peer} c{c}": (1.0, None) for peer in PEERS for c in (32, 64)},
           "featurizer p50 at 1 caller / limit batch-1 latency": (None, 1.2),
           "featurizer/echo largenet_c64": (0.7, None), "memory growth after the first minute": (None, 0.05),
           **photos.TARGETS}


def machine() -> dict:
    import psutil
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def ratios_of_round(rnd: dict, cfg: dict) -> dict[str, Optional[float]]:
    """Every ratio the issue asks for, from one round's figures."""
    feat = rnd.get("featurizer", {})
    limit = rnd.get("limit", {})
    out: dict[str, Optional[float]] = {}
    labels = [label for label in feat.get("loads", {}) if not photos.is_photo_label(label)]
    for label in labels:
        if label.startswith("largenet"):
            out[f"featurizer/echo {label}"] = ratio(ips(feat, label), ips(rnd.get("echo", {}), label))
            continue
        if limit.get("best"):
            out[f"featurizer/limit {label}"] = ratio(ips(feat, label), limit["best"]["images_per_s"])
        for other in ("naive", *PEERS):
            if other in rnd and "loads" in rnd[other]:
                out[f"featurizer/{other} {label}"] = ratio(ips(feat, label), ips(rnd[other], label))
        for v2 in V2:  # the protocol's cost: the same server and loads, through tritonclient
            if v2 in rnd and "loads" in rnd[v2]:
                out[f"{v2}/featurizer.v1 {label}"] = ratio(ips(rnd[v2], label), ips(feat, label))
                out[f"{v2}/featurizer.v1 p50 {label}"] = ratio(p50(rnd[v2], label), p50(feat, label))
    c1 = feat.get("loads", {}).get("c1", {}).get("latency_ms", {}).get("p50")
    if limit.get("batch1") and c1:
        out["featurizer p50 at 1 caller / limit batch-1 latency"] = c1 / limit["batch1"]["latency_ms"]["p50"]
    out.update(photos.ratios(rnd, cfg.get("phone_concurrency", 0), cfg.get("repeat_fraction", 0.0)))
    return out


def summarize(results: dict) -> dict:
    """Median and range over rounds of every ratio, and of every system's images/s per load."""
    per_round = [ratios_of_round(rnd, results["config"]) for rnd in results["rounds"]]
    ratios = {}
    for key in dict.fromkeys(k for r in per_round for k in r):
        values = [v for r in per_round if (v := r.get(key)) is not None]
        ratios[key] = _spread(values)
    throughput: dict[str, dict] = {}
    for rnd in results["rounds"]:
        for name, result in rnd.items():
            if name == "limit" and result.get("best"):
                throughput.setdefault("limit", {}).setdefault("best", []).append(result["best"]["images_per_s"])
            if name == photos.PHONE_LIMIT:
                phone = photos.limit_throughput(result, results["config"]["phone_concurrency"])
                for label, value in phone.items():
                    throughput.setdefault(name, {}).setdefault(label, []).append(value)
            for label, load in result.get("loads", {}).items():
                if load.get("images_per_s"):
                    throughput.setdefault(name, {}).setdefault(label, []).append(load["images_per_s"])
    memory = results.get("memory")
    if memory and memory.get("growth") is not None:
        ratios["memory growth after the first minute"] = _spread([memory["growth"]])
    return {"ratios": ratios,
            "images_per_s": {n: {l: _spread(v) for l, v in loads.items()} for n, loads in throughput.items()}}


def _spread(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def one_line(name: str, result: dict) -> str:
    if "failed" in result or "skipped" in result:
        return ("FAILED: " + result["failed"].splitlines()[0]) if "failed" in result else "skipped"
    if name == "limit":
        best = result["best"]
        return (f"best {best['images_per_s']:.1f} img/s (batch {best['batch']}, channels_last={best['channels_last']}, "
                f"pipelined={best['pipelined']})")
    if name == photos.PHONE_LIMIT:
        return "; ".join(f"{mode}: best {r['best']['images_per_s']:.1f} img/s (batch {r['best']['batch']}), batch-1 p50 "
                         f"{r['batch1']['latency_ms']['p50']:.0f} ms" for mode, r in result.items())
    return ", ".join(f"{label} {load.get('images_per_s', 0):.1f} img/s" for label, load in result["loads"].items())


def summary_text(summary: dict) -> str:
    lines = ["ratio (median [min..max] over rounds):"]
    for key, s in summary["ratios"].items():
        lines.append(f"  {key}: " + (f"{s['median']:.2f} [{s['min']:.2f}..{s['max']:.2f}]" if s["n"] else "n/a"))
    return "\n".join(lines)


def write(results: dict, results_dir: Path, docs_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    docs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(results["started_unix"]))
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    import plots

    images = plots.draw(results, docs_dir)
    md_path = docs_dir / "performance.md"
    md_path.write_text(markdown(results, json_path, images))
    return json_path, md_path


def _fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})" if s.get("n") else "n/a"


def markdown(results: dict, json_path: Path, images: list[Path]) -> str:
    m, cfg, summary = results["machine"], results["config"], results["summary"]
    out = ["# Performance", "",
           "Generated by `bench/report.py` from one run of `bench/run.py`; do not edit by hand except "
           "`bench/where_time_goes.md`, which is included below.", "",
           "## Machine and command", "",
           f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']} "
           f"({m['torch_threads']} threads), Python {m['python']}; {m['platform']}",
           f"- Command: `{results['command']}` ({'quick' if cfg['quick'] else 'full'} mode, {cfg['rounds']} round(s), "
           f"{cfg['seconds']:g} s per load after {cfg['warmup']:g} s warm-up; run took {results['duration_s'] / 60:.1f} min)",
           f"- Raw results: `{json_path.relative_to(BENCH.parent) if json_path.is_relative_to(BENCH.parent) else json_path}`",
           "- Payloads: " + ", ".join(f"{p['name']} {p['width']}x{p['height']} ({p['bytes'] // 1024} KiB JPEG)"
                                      for p in results["payloads"]["full"]) + "; LargeNet gets the same photos at 32x32.",
           *_photos_lines(results),
           "- Load generators are separate processes (grpc.aio, no torch) on the same 2 cores as the server: "
           "their CPU time (per load below, and `client_cpu_s` in the JSON) is taken from the server under test.",
           "- `v2-grpc` / `v2-http`: the same featurizer server over the Open Inference Protocol, loaded by "
           "tritonclient 2.73's asyncio clients (`bench/triton_load.py` in tritonclient's own venv): one BYTES "
           "input of JPEGs per request, `embeddings` back (raw over gRPC, binary data over HTTP); "
           "`v2-…/featurizer.v1` ratios compare them with the featurizer row of the same round.",
           "- Reproduce: `make bench` (this report), `make bench-quick` (smoke, written to bench/results/quick/); "
           "`python bench/run.py --systems featurizer --rounds 1 --concurrency '' --batch 0 --largenet-concurrency 0` "
           "for the 10-minute memory check alone; "
           "`python bench/run.py --help` for every option.",
           "", "## Ratios (median and range over rounds)", "",
           "Targets are the issue's; \"met\" judges the median.", "",
           "| ratio | median (min–max) | target | met |", "|---|---|---|---|"]
    out += [f"| {key} | {_fmt(s)} | {_target_text(key)} | {_met(key, s)} |" for key, s in summary["ratios"].items()]
    out += ["", "## Throughput (images/s, median and range over rounds)", ""]
    labels = sorted(dict.fromkeys(l for loads in summary["images_per_s"].values() for l in loads),
                    key=photos.is_photo_label)  # the photos part's columns last, each group in run order
    out += ["| system | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, loads in summary["images_per_s"].items():
        out.append(f"| {name} | " + " | ".join(_fmt(loads[l], 1) if l in loads else "" for l in labels) + " |")
    out += ["", "The limit is one figure (best batch size and memory format, in-process), so it appears "
            "under `best`; `limit-phone`'s are its best per decode mode on the phone photos, under featurizer's "
            "labels for the same photos.", "", "## Every round", ""]
    for i, rnd in enumerate(results["rounds"]):
        out += [f"### Round {i + 1}", "", "| system | load | images/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB "
                "| load generator CPU |", "|---|---|---|---|---|---|---|---|---|"]
        for name, result in rnd.items():
            out += _round_rows(name, result, cfg["warmup"])
        out.append("")
    if "memory" in results:
        mem = results["memory"]
        out += ["## Memory under load", "",
                f"{mem['minutes']:g} minutes of {mem['concurrency']} callers: RSS {mem['first_minute_rss_bytes'] / 2**20:.0f} MiB "
                f"after the first minute, {mem['end_rss_bytes'] / 2**20:.0f} MiB at the end "
                f"({(mem['growth'] or 0) * 100:+.1f}%), peak {mem['peak_rss_bytes'] / 2**20:.0f} MiB.", ""]
    out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    if EARLIER.exists():
        out += [EARLIER.read_text().strip(), ""]
    if ANALYSIS.exists():
        out += [ANALYSIS.read_text().strip(), ""]
    if DECODING.exists():
        out += [DECODING.read_text().strip(), ""]
    if "pytriton" in cfg["systems"]:
        out += ["## Peers that could not run", "", PYTRITON.read_text().strip(), ""]
    return "\n".join(out)


def _photos_lines(results: dict) -> list[str]:
    """The header's account of the photos part: what the phone payloads and the cache workload are."""
    cfg, lines = results["config"], []
    phone = results["payloads"].get("phone")
    if cfg.get("phone_concurrency") and phone:
        kib = sorted(p["bytes"] // 1024 for p in phone)
        lines.append(
            f"- Phone photos (`phone_*` loads, `limit-phone`): the same {len(phone)} photos upscaled (bicubic) to "
            f"{phone[0]['width']}x{phone[0]['height']}, JPEG q90 ({kib[0]}–{kib[-1]} KiB). `phone_cN` is `alexnet` "
            "(exact decode), `phone_fast_cN` is `alexnet_fast`: the same weights with `input.decode: fast` (libjpeg's "
            "reduced-scale decode). The exact limit uses featurizer's own exact resize (row chunks, bit-identical to "
            "torchvision's `ImageClassification` preset and faster than it), so the exact limit is itself faster than "
            "torchvision's preset path; the fast limit adds featurizer's reduced-scale decode.")
    if cfg.get("repeat_fraction"):
        share = round(cfg["repeat_fraction"] * 100)
        lines.append(
            f"- Cache workload (`{photos.repeat_label(cfg['repeat_fraction'])}`): {photos.REPEAT_CONCURRENCY} callers "
            f"on the full photos; {share}% of the requests (seeded) send one of the files byte for byte, the others a "
            "unique variant (the same JPEG with a COM segment holding a counter after SOI: other bytes, the same "
            f"decoding). `featurizer` runs it with the response cache off (`--cache-bytes 0`, the default), `{CACHED}` "
            f"with `--cache-bytes {CACHE_BYTES}`; the round tables split the latency of repeats (bytes already sent "
            "in the run) and unique requests.")
    return lines


def _target_text(key: str) -> str:
    low, high = TARGETS.get(key, (None, None))
    return f">= {low:g}" if low is not None else (f"<= {high:g}" if high is not None else "")


def _met(key: str, s: dict) -> str:
    if key not in TARGETS or not s.get("n"):
        return ""
    low, high = TARGETS[key]
    ok = (low is None or s["median"] >= low) and (high is None or s["median"] <= high)
    return "yes" if ok else "**no**"


def _round_rows(name: str, result: dict, warmup: float) -> list[str]:
    if "skipped" in result:
        return [f"| {name} | — | skipped: {result['skipped'].splitlines()[0]} | | | | | | |"]
    if "failed" in result:
        return [f"| {name} | — | failed: {result['failed'].splitlines()[0][:120]} | | | | | | |"]
    if name == "limit":
        return _limit_rows(name, result)
    if name == photos.PHONE_LIMIT:
        return [row for mode, part in result.items() for row in _limit_rows(name, part, f"{mode} ")]
    rows = []
    for label, load in result["loads"].items():
        if "failed" in load:
            rows.append(f"| {name} | {label} | failed | | | | | | |")
            continue
        lat = load["latency_ms"]
        errors = sum(load["errors"].values())
        share = load["client_cpu_s"] / (load["seconds"] + warmup)  # of one core, over its whole run
        rows.append(f"| {name} | {label} | {load['images_per_s']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
                    f"{lat['p99']:.0f} | {errors} | {result.get('peak_rss_bytes', 0) / 2**20:.0f} | {share:.0%} of a core |")
        for kind, part in load.get("by_kind", {}).items():  # the cache workload: repeats and unique requests
            lat = part["latency_ms"]
            rows.append(f"| {name} | {label}: {kind} ({part['requests']} requests) | | {lat['p50']:.1f} | "
                        f"{lat['p95']:.1f} | {lat['p99']:.1f} | | | |")
    return rows


def _limit_rows(name: str, result: dict, mode: str = "") -> list[str]:
    rows = []
    for c in result["configs"]:
        lat = c["latency_ms"]
        rows.append(f"| {name} | {mode}batch {c['batch']}{' channels_last' if c['channels_last'] else ''}"
                    f"{' pipelined' if c['pipelined'] else ''} | "
                    f"{c['images_per_s']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | {lat['p99']:.0f} | 0 | "
                    f"{result['peak_rss_bytes'] / 2**20:.0f} | — |")
    return rows
