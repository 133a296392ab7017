"""bench/gpu_check.sh, the one script the GPU machine runs, end to end on this CPU machine: the
same report layout comes out, with the GPU-only fields saying why they did not run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = "not run: no CUDA"


def test_gpu_check_runs_on_cpu_and_writes_the_report_layout(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), str(out), "--device", "cpu", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert {"env", "tests", "embeddings", "limit", "serve", "ratios", "settings"} <= report.keys()
    assert not [name for name, stage in report.items() if isinstance(stage, dict) and "error" in stage], report
    assert report["tests"]["exit_code"] == 0
    rows = {(r["precision"], r["decode"]): r for r in report["embeddings"]["rows"]}
    assert rows[("fp32", "cpu")]["ok"] and rows[("fp32", "cpu")]["max_rel_diff"] <= 1e-5
    assert rows[("fp16", "cpu")]["result"] == NO_CUDA and rows[("fp32", "cuda")]["result"] == NO_CUDA
    assert report["limit"]["gpu_memory_peak_bytes"] == NO_CUDA
    assert report["limit"]["best"]["cpu"]["images_per_s"] > 0
    assert set(report["limit"]["decode_rates"]) == {"p224", "mp12"}
    assert report["limit"]["decode_rates"]["mp12"]["cuda"] == NO_CUDA
    served = [r for r in report["serve"]["runs"] if r["decode"] == "cpu"]
    assert [(r["concurrency"], r["batch"]) for r in served] == [(1, 1), (4, 1), (1, 8)]
    assert all(r["images"] > 0 and not r["errors"] for r in served)
    assert {"decode": "cuda", "result": NO_CUDA} in report["serve"]["runs"]
    assert report["ratios"]["decode_cuda_lone_p50_vs_limit_batch1"] == NO_CUDA
    markdown = (out / "report.md").read_text()
    for heading in ("## Machine", "## Tests on the device", "## Embeddings vs the CPU fp32 reference",
                    "## In-process limit", "## Decode rates", "## featurizer serve", "## Ratios"):
        assert heading in markdown
    assert (out / "logs" / "tests.log").is_file() and (out / "logs" / "serve-cpu.log").is_file()
