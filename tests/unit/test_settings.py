"""Settings: flags, FEATURIZER_* fallbacks and messages that name the bad flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from featurizer.settings import SettingsError, parse_settings


def test_flag_beats_env_beats_default():
    assert parse_settings([], env={}).max_batch_size == 64
    assert parse_settings([], env={"FEATURIZER_MAX_BATCH_SIZE": "8"}).max_batch_size == 8
    assert parse_settings(["--max-batch-size", "4"], env={"FEATURIZER_MAX_BATCH_SIZE": "8"}).max_batch_size == 4


@pytest.mark.parametrize("argv, env, flag", [
    (["--max-batch-size", "0"], {}, "--max-batch-size"),
    ([], {"FEATURIZER_PORT": "70000"}, "--port"),
    ([], {"FEATURIZER_PRECISION": "fp8"}, "--precision"),
    ([], {"FEATURIZER_MAX_QUEUE": "many"}, "FEATURIZER_MAX_QUEUE"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {}, "--tls-cert"),
])
def test_bad_values_name_the_flag(argv, env, flag):
    with pytest.raises(SettingsError, match=flag):
        parse_settings(argv, env=env)


def test_cli_exits_with_the_message():
    result = subprocess.run([sys.executable, "-m", "featurizer", "serve", "--max-queue", "-3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--max-queue" in result.stderr and "-3" in result.stderr


def test_help_lists_flags_and_env():
    result = subprocess.run([sys.executable, "-m", "featurizer", "serve", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--max-batch-size" in result.stdout and "FEATURIZER_MAX_BATCH_SIZE" in result.stdout
