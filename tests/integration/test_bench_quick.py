"""The benchmark keeps working: a --quick run of a subset completes and writes its JSON and report.

No timing assertions: figures depend on the machine. What must hold is the shape of the results
(every system, every load, every ratio the report promises) and that the servers it started are
gone afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
LOAD_KEYS = {"concurrency", "batch", "seconds", "requests", "images", "images_per_s", "errors", "latency_ms", "client_cpu_s"}


def test_quick_bench_writes_results_and_report(tmp_path):
    results_dir, docs_dir = tmp_path / "results", tmp_path / "docs"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
               "--systems", "limit,featurizer,v2-grpc,v2-http,naive,echo",
               "--concurrency", "1,8", "--batch", "8", "--largenet-concurrency", "8", "--seconds", "1", "--warmup", "0.2",
               "--results-dir", str(results_dir), "--docs-dir", str(docs_dir), "--log-dir", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    (json_path,) = results_dir.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["config"]["quick"] is True and len(results["rounds"]) == 1
    rnd = results["rounds"][0]
    assert set(rnd) == {"limit", "featurizer", "v2-grpc", "v2-http", "naive", "echo"}
    assert {"best", "batch1", "configs"} <= set(rnd["limit"]) and rnd["limit"]["best"]["images_per_s"] > 0
    assert set(rnd["featurizer"]["loads"]) == {"c1", "c8", "b8", "largenet_c8"}
    assert set(rnd["naive"]["loads"]) == {"c1", "c8", "b8"}
    # the Open Inference Protocol rows: the same AlexNet loads, through tritonclient's grpc and http clients
    assert set(rnd["v2-grpc"]["loads"]) == set(rnd["v2-http"]["loads"]) == {"c1", "c8", "b8"}
    assert set(rnd["echo"]["loads"]) == {"largenet_c8"}
    for name in ("featurizer", "v2-grpc", "v2-http", "naive", "echo"):
        assert rnd[name]["peak_rss_bytes"] > 0
        for label, load in rnd[name]["loads"].items():
            assert set(load) == LOAD_KEYS, (name, label, load)
            assert load["errors"] == {}, (name, label, load["errors"])

    ratios = results["summary"]["ratios"]
    for key in ("featurizer/limit c8", "featurizer/naive c8", "featurizer/echo largenet_c8",
                "featurizer p50 at 1 caller / limit batch-1 latency", "v2-grpc/featurizer.v1 c8",
                "v2-http/featurizer.v1 c8", "v2-grpc/featurizer.v1 p50 b8", "v2-http/featurizer.v1 p50 b8"):
        assert key in ratios, sorted(ratios)

    report = (docs_dir / "performance.md").read_text()
    assert "## Ratios" in report and results["command"] in report
    assert (docs_dir / "performance-throughput.png").stat().st_size > 0
    assert (docs_dir / "performance-latency.png").stat().st_size > 0
    # Every server the bench started has been stopped.
    assert [name for name in ("featurizer", "v2-grpc", "v2-http", "naive", "echo")
            if psutil.pid_exists(rnd[name]["pid"])] == []
