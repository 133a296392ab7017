"""The benchmark keeps working: a --quick run of a subset completes and writes its JSON and report.

No timing assertions: figures depend on the machine. What must hold is the shape of the results
(every system, every load, every ratio the report promises) and that the servers it started are
gone afterwards. The photos part runs too: the phone limit (exact and fast decode), featurizer's
phone loads, and the 50%-repeat workload with the response cache off and on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
LOAD_KEYS = {"concurrency", "batch", "seconds", "requests", "images", "images_per_s", "errors", "latency_ms", "client_cpu_s"}
PHONE_LOADS = {"phone_c4", "phone_fast_c4", "phone_c1", "phone_fast_c1"}
REPEAT_LOAD = "repeat50_c32"
SERVERS = ("featurizer", "featurizer-cache", "v2-grpc", "v2-http", "naive", "echo")


def test_quick_bench_writes_results_and_report(tmp_path):
    results_dir, docs_dir = tmp_path / "results", tmp_path / "docs"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
               "--systems", "limit,featurizer,v2-grpc,v2-http,naive,echo",
               "--concurrency", "1,8", "--batch", "8", "--largenet-concurrency", "8", "--phone-concurrency", "4",
               "--repeat-fraction", "0.5", "--seconds", "1", "--warmup", "0.2",
               "--results-dir", str(results_dir), "--docs-dir", str(docs_dir), "--log-dir", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    (json_path,) = results_dir.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["config"]["quick"] is True and len(results["rounds"]) == 1
    rnd = results["rounds"][0]
    assert set(rnd) == {"limit", "limit-phone", *SERVERS}
    assert {"best", "batch1", "configs"} <= set(rnd["limit"]) and rnd["limit"]["best"]["images_per_s"] > 0
    # the phone limit: once per decode mode, at the phone batch and at batch 1
    assert set(rnd["limit-phone"]) == {"exact", "fast"}
    for mode, limit in rnd["limit-phone"].items():
        assert limit["decode"] == mode and limit["best"]["images_per_s"] > 0 and limit["batch1"]["batch"] == 1
        assert {c["batch"] for c in limit["configs"]} == {1, 4}
    assert set(rnd["featurizer"]["loads"]) == {"c1", "c8", "b8", "largenet_c8", *PHONE_LOADS, REPEAT_LOAD}
    assert set(rnd["featurizer-cache"]["loads"]) == {REPEAT_LOAD}
    assert set(rnd["naive"]["loads"]) == {"c1", "c8", "b8"}
    # the Open Inference Protocol rows: the same AlexNet loads, through tritonclient's grpc and http clients
    assert set(rnd["v2-grpc"]["loads"]) == set(rnd["v2-http"]["loads"]) == {"c1", "c8", "b8"}
    assert set(rnd["echo"]["loads"]) == {"largenet_c8"}
    for name in SERVERS:
        assert rnd[name]["peak_rss_bytes"] > 0
        for label, load in rnd[name]["loads"].items():
            assert set(load) == LOAD_KEYS | ({"by_kind"} if label == REPEAT_LOAD else set()), (name, label, load)
            assert load["errors"] == {}, (name, label, load["errors"])
            assert load["requests"] > 0, (name, label)
    # the repeat workload tells repeats (bytes already sent) from unique requests, with the cache off and on
    for name in ("featurizer", "featurizer-cache"):
        by_kind = rnd[name]["loads"][REPEAT_LOAD]["by_kind"]
        assert set(by_kind) == {"repeat", "unique"}, (name, by_kind)
        assert sum(kind["requests"] for kind in by_kind.values()) == rnd[name]["loads"][REPEAT_LOAD]["requests"]

    ratios = results["summary"]["ratios"]
    for key in ("featurizer/limit c8", "featurizer/naive c8", "featurizer/echo largenet_c8",
                "featurizer p50 at 1 caller / limit batch-1 latency", "v2-grpc/featurizer.v1 c8",
                "v2-http/featurizer.v1 c8", "v2-grpc/featurizer.v1 p50 b8", "v2-http/featurizer.v1 p50 b8",
                "featurizer exact / limit exact, phone c4", "featurizer fast / limit exact, phone c4",
                "featurizer fast / limit fast, phone c4", "featurizer fast p50 at 1 caller, phone (ms)",
                "featurizer fast p50 at 1 caller / limit fast batch-1 latency, phone",
                "featurizer exact p50 at 1 caller / limit exact batch-1 latency, phone",
                "cache on / cache off images/s, 50% repeats c32", "cache-hit p50 (ms), 50% repeats c32"):
        assert key in ratios and ratios[key]["n"] == 1, (key, sorted(ratios))
    assert not any(key.startswith("featurizer/limit phone") or key.startswith("featurizer/limit repeat")
                   for key in ratios), sorted(ratios)  # the photos part is compared with its own limit

    report = (docs_dir / "performance.md").read_text()
    assert "## Ratios" in report and results["command"] in report
    assert (docs_dir / "performance-throughput.png").stat().st_size > 0
    assert (docs_dir / "performance-latency.png").stat().st_size > 0
    assert (docs_dir / "performance-phone.png").stat().st_size > 0
    assert "4032x3024" in report and "bit-identical to torchvision" in report and "repeat50_c32" in report
    # Every server the bench started has been stopped.
    assert [name for name in SERVERS if psutil.pid_exists(rnd[name]["pid"])] == []
