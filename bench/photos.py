"""The photos part of a round: phone-size photos (exact and fast decode), and a response-cache workload.

What runs, beside the other systems' loads:

- ``limit-phone``: ``limit.py`` on the phone photos once per decode mode (exact: featurizer's exact
  path; fast: its reduced-scale JPEG decode), channels_last, at batch ``--phone-concurrency`` and 1
  (the lone caller's best latency), pipelined off and on.
- featurizer's phone loads: ``phone_cN`` (``alexnet``, exact) and ``phone_fast_cN`` (``alexnet_fast``,
  the same weights with ``input.decode: fast``) at N callers and at 1.
- ``repeatF_c32``: 32 callers on the full photos, a share F of the requests repeating a payload file
  byte for byte (``repeats.py``), on featurizer (cache off) and ``featurizer-cache`` (cache on).

and which ratios come of them, with the issue's targets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from demo_registry import ALEXNET_FAST
from figures import ips, p50, ratio
from procs import run_to_json
from repeats import REPEAT
from systems import CACHED, Context

BENCH = Path(__file__).resolve().parent
PHONE_LIMIT = "limit-phone"
MODES = ("exact", "fast")
MODEL = {"exact": "alexnet", "fast": ALEXNET_FAST}
REPEAT_CONCURRENCY = 32
PER_IMAGE_S = {"exact": 0.06, "fast": 0.025}  # decode + resize of one phone photo on 2 busy cores (estimates)


def phone_label(mode: str, concurrency: int) -> str:
    return f"phone_c{concurrency}" if mode == "exact" else f"phone_{mode}_c{concurrency}"


def repeat_label(fraction: float) -> str:
    return f"repeat{round(fraction * 100)}_c{REPEAT_CONCURRENCY}"


def is_photo_label(label: str) -> bool:
    """A load of this part (compared with the phone limit or the other cache setting, not the limit)."""
    return label.startswith(("phone_", "repeat"))


def phone_loads(concurrency: int) -> list[dict]:
    """featurizer's phone loads: N callers and a lone one, exact then fast (none when N is 0)."""
    counts = dict.fromkeys((concurrency, 1)) if concurrency else {}
    return [{"label": phone_label(mode, c), "rpc": "embed", "model": MODEL[mode], "payloads": "phone",
             "concurrency": c, "batch": 1} for c in counts for mode in MODES]


def repeat_loads(fraction: float) -> list[dict]:
    """The cache workload on the full photos (none when the fraction is 0)."""
    return [{"label": repeat_label(fraction), "rpc": "embed", "model": "alexnet", "payloads": "full",
             "concurrency": REPEAT_CONCURRENCY, "batch": 1, "repeat_fraction": fraction}] if fraction else []


def tail_s(load: dict) -> float:
    """Time a load may run past its window: its callers' last requests (long on phone photos)."""
    if load["payloads"] != "phone":
        return 0.0
    return load["concurrency"] * PER_IMAGE_S["fast" if load["model"] == ALEXNET_FAST else "exact"]


def _batches(concurrency: int) -> list[int]:
    return list(dict.fromkeys((1, concurrency)))


def _pipelining(quick: bool) -> list[str]:
    return ["off"] if quick else ["off", "on"]


def run_limit(ctx: Context, concurrency: int, seconds: float, quick: bool, round_index: int) -> dict:
    """``limit.py`` on the phone photos, exact then fast: {mode: its JSON}."""
    out = {}
    for mode in MODES:
        argv = [sys.executable, str(BENCH / "limit.py"), "--payloads", str(ctx.payloads["phone"]),
                "--seconds", str(seconds), "--decode", mode, "--batches", ",".join(map(str, _batches(concurrency))),
                "--formats", "channels_last", "--pipelining", ",".join(_pipelining(quick))]
        out[mode] = json.loads(run_to_json(f"{PHONE_LIMIT}-{mode}-r{round_index}", argv, ctx.log_dir, timeout=600))
    return out


def limit_estimate_s(concurrency: int, seconds: float, quick: bool) -> float:
    """A rough upper bound of ``run_limit``: per configuration its window, a warm-up batch and the
    batch that overruns the window; per mode a process start."""
    total = 0.0
    for mode in MODES:
        batches = sum(seconds + 2 * b * PER_IMAGE_S[mode] + 1.5 for b in _batches(concurrency))
        total += 10 + batches * len(_pipelining(quick))
    return total


# The targets for the ratios below: (at least, at most)
TARGETS = {"featurizer exact / limit exact, phone c32": (1.0, None),
           "featurizer fast / limit exact, phone c32": (3.5, None),
           "featurizer fast / limit fast, phone c32": (0.85, None),
           "featurizer fast p50 at 1 caller, phone (ms)": (None, 40.0),
           "cache on / cache off images/s, 50% repeats c32": (1.8, None),
           "cache-hit p50 (ms), 50% repeats c32": (None, 2.0)}


def ratios(rnd: dict, concurrency: int, fraction: float) -> dict[str, Optional[float]]:
    """This part's ratios from one round's figures (none for a part that did not run)."""
    feat = rnd.get("featurizer", {})
    out: dict[str, Optional[float]] = {}
    if concurrency:
        limit = {mode: rnd.get(PHONE_LIMIT, {}).get(mode, {}) for mode in MODES}
        best = {mode: limit[mode].get("best", {}).get("images_per_s") for mode in MODES}
        lone = {mode: (limit[mode].get("batch1") or {}).get("latency_ms", {}).get("p50") for mode in MODES}
        many = {mode: ips(feat, phone_label(mode, concurrency)) for mode in MODES}
        one = {mode: p50(feat, phone_label(mode, 1)) for mode in MODES}
        out[f"featurizer exact / limit exact, phone c{concurrency}"] = ratio(many["exact"], best["exact"])
        out[f"featurizer fast / limit exact, phone c{concurrency}"] = ratio(many["fast"], best["exact"])
        out[f"featurizer fast / limit fast, phone c{concurrency}"] = ratio(many["fast"], best["fast"])
        out["featurizer fast p50 at 1 caller, phone (ms)"] = one["fast"]
        out["featurizer fast p50 at 1 caller / limit fast batch-1 latency, phone"] = ratio(one["fast"], lone["fast"])
        out["featurizer exact p50 at 1 caller / limit exact batch-1 latency, phone"] = ratio(one["exact"], lone["exact"])
    if fraction:
        label, share = repeat_label(fraction), f"{round(fraction * 100)}% repeats c{REPEAT_CONCURRENCY}"
        cached = rnd.get(CACHED, {})
        out[f"cache on / cache off images/s, {share}"] = ratio(ips(cached, label), ips(feat, label))
        out[f"cache-hit p50 (ms), {share}"] = p50(cached, label, REPEAT)
        out[f"cache off: repeat p50 (ms), {share}"] = p50(feat, label, REPEAT)
    return out


def limit_throughput(result: dict, concurrency: int) -> dict[str, float]:
    """The phone limit's best images/s per mode, under featurizer's labels for the same photos."""
    return {phone_label(mode, concurrency): result[mode]["best"]["images_per_s"]
            for mode in MODES if result.get(mode, {}).get("best")}
