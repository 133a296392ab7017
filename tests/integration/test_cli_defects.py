"""The command line: ``featurizer-client`` exit codes and messages against a
real server (bad arguments exit 2, an unreachable target is named, an unknown health service is
named, FAILED reasons show in ``models``, ``--pooling`` has no empty choice) and ``featurizer``'s
help texts and start-up line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurizer.cli import build_parser
from tests.support.images import encode
from tests.support.registries import flip_byte, publish_largenet
from tests.support.servers import LISTENING, free_port

BIN = Path(sys.executable).parent
CLI = str(BIN / "featurizer-client")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-defects-registry")
    publish_largenet(root, "largenet", num_classes=3, labels=("a", "b", "c"), seed=5)
    scratch = tmp_path_factory.mktemp("cli-defects-scratch")
    publish_largenet(scratch, "broken", num_classes=3, labels=("a", "b", "c"), seed=6)
    flip_byte(scratch / "broken" / "1" / "weights.safetensors")  # sha256 mismatch: the version FAILS
    (scratch / "broken").rename(root / "broken")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-defects-images")
    (root / "one.png").write_bytes(encode(np.full((32, 32, 3), 90, np.uint8), "PNG"))
    return root


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# ----- exit status 2 for bad arguments ----------------------------------------------------------
@pytest.mark.parametrize("flag", ["--batch-size", "--max-in-flight"])
def test_a_batch_size_below_one_is_a_usage_error(server, image_dir, tmp_path, flag):
    done = run("embed", str(image_dir), "-o", str(tmp_path / "x.npy"), flag, "0", "--target", server.target)
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr and "expected an integer >= 1, got 0" in done.stderr


def test_paths_that_match_nothing_are_usage_errors_found_before_any_call(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # exit 2 without a server: checked before connecting
    missing = run("embed", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "x.npy"), "--target", nobody)
    (tmp_path / "empty").mkdir()
    empty = run("predict", str(tmp_path / "empty"), "--model", "largenet", "--target", nobody)
    assert missing.returncode == 2 and "nothing-here" in missing.stderr, missing.stderr
    assert empty.returncode == 2 and "no image files" in empty.stderr and "empty" in empty.stderr, empty.stderr


def test_pooling_choices_have_no_empty_entry(server, image_dir, tmp_path):
    helped = " ".join(run("embed", "--help").stdout.split())  # help text wraps at any space
    empty = run("embed", str(image_dir), "-o", str(tmp_path / "x.npy"), "--pooling", "", "--target", server.target)
    assert "{flatten,avg,max,none}" in helped and "[default: the model's own]" in helped
    assert empty.returncode == 2 and "--pooling" in empty.stderr


# ----- messages -------------------------------------------------------------------------------
def test_an_unreachable_target_is_named_and_fails_fast(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    models = run("models", "--target", target, "--timeout", "60")  # the default connect window
    elapsed = time.monotonic() - start
    health = run("health", "--target", target)
    assert models.returncode == 1 and health.returncode == 1
    for done in (models, health):
        assert f"UNAVAILABLE: cannot reach featurizer at {target}" in done.stderr, done.stderr
    assert elapsed < 30, elapsed  # not the 60 s call timeout


def test_unknown_health_service_names_it_and_the_valid_ones(server):
    done = run("health", "--service", "nope", "--target", server.target)
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr and "'nope'" in done.stderr
    assert "featurizer.v1.Featurizer" in done.stderr and "largenet" in done.stderr and "broken" in done.stderr


def test_models_table_shows_why_a_version_failed(server):
    done = run("models", "--target", server.target)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[-1] == "REASON"
    (broken,) = [r for r in rows if r.startswith("broken")]
    assert "FAILED" in broken and "sha256" in broken, broken
    (good,) = [r for r in rows if r.startswith("largenet")]
    assert good.split()[2] == "AVAILABLE"


def test_cli_default_target_is_featurizer_target(server):
    done = run("health", env={"FEATURIZER_TARGET": server.target})
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


# ----- featurizer (the server's CLI) --------------------------------------------------------------
def test_featurizer_help_is_plain_text():
    done = subprocess.run([str(BIN / "featurizer"), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "``" not in done.stdout and "featurizer COMMAND --help" in done.stdout


def test_every_registry_publishing_flag_has_help():
    registry = _subparser(build_parser(), "registry")
    for action in ("add", "import-torchvision"):
        parser = _subparser(registry, action)
        silent = [a.dest for a in parser._actions if not a.help]
        assert not silent, f"registry {action}: no help for {silent}"


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices[name]


@pytest.mark.slow  # one `featurizer serve` start-up
def test_start_up_line_says_metrics_off(registry):
    args = [sys.executable, "-m", "featurizer", "serve", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "-1", "--registry", str(registry)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # the first line is the listening line (or EOF if it died)
    finally:
        proc.terminate()
        proc.wait(60)
        proc.stdout.close()
    assert line.rstrip().endswith("(metrics off)") and "None" not in line, line
    match = LISTENING.search(line)
    assert match and match.group(3) == "off" and int(match.group(2)) > 0
