"""Server settings: one frozen object, parsed once from flags with ``FEATURIZER_*`` env fallback.

Every field below is a ``featurizer serve`` flag (``max_batch_size`` -> ``--max-batch-size``) and
an environment variable (``FEATURIZER_MAX_BATCH_SIZE``). A flag beats the environment, which
beats the default. Bad values raise ``SettingsError`` naming the flag and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

ENV_PREFIX = "FEATURIZER_"


def default_registry() -> Path:
    """Where ``featurizer serve`` without ``--registry`` creates and serves the embedded demo
    registry: the user's cache directory."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("featurizer")) / "registry"


class SettingsError(ValueError):
    """A flag or environment variable with a bad value."""


class InvalidOption(ValueError):
    """An option's value that cannot work (a training folder without classes, a bad backbone name).

    Raised by the library, which names the option as a field name (``val_fraction``); the command
    line shows it as its flag (``--val-fraction``), so library messages never spell flags."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


class InvalidSetting(InvalidOption):
    """A ``Settings`` field whose value cannot work here (a busy port, a missing GPU, an empty token
    file); the command line names its flag and its environment variable."""

    @property
    def setting(self) -> str:
        return self.option


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    registry: Optional[Path] = _opt(None, "model registry directory (default: an embedded demo registry in the user cache)")
    host: str = _opt("127.0.0.1", "address to bind the gRPC server to (0.0.0.0 for all interfaces)")
    port: int = _opt(50051, "gRPC port (0 = pick a free one)")
    metrics_port: int = _opt(9090, "Prometheus /metrics port (0 = pick a free one, -1 = disabled)")
    http_port: int = _opt(-1, "Open Inference Protocol (KServe v2) HTTP/REST port, beside v2 gRPC on --port "
                              "(0 = pick a free one, -1 = disabled)")
    device: str = _opt("auto", "cpu, cuda or cuda:N; auto = cuda when available, else cpu")
    precision: str = _opt("fp32", "fp32, fp16 or bf16 (autocast; fp16/bf16 on CUDA only)", choices=("fp32", "fp16", "bf16"))
    decode_device: str = _opt("cpu", "where JPEGs are decoded: cpu, or cuda (nvJPEG, in batches; other formats and "
                                     "JPEGs it cannot take stay on the CPU; refused without CUDA)", choices=("cpu", "cuda"))
    channels_last: str = _opt("auto", "on, off or auto (on for CPU and CUDA, where it is faster for AlexNet)", choices=("auto", "on", "off"))
    threads: int = _opt(0, "intra-op threads for torch on CPU (0 = torch's default)")
    max_batch_size: int = _opt(64, "largest batch (images) per forward pass, unless a model's manifest says otherwise")
    max_delay_ms: float = _opt(2.0, "with more than one batch in flight, how long a partial batch may wait for more "
                                    "images (an idle model never waits)")
    max_concurrent_batches: int = _opt(0, "batches a model may have in flight at once (0 = auto: 1 on CPU, where one "
                                          "batch already uses every core; 2 on CUDA, so one uploads while one computes)")
    max_queue: int = _opt(1024, "images queued per model before new requests get RESOURCE_EXHAUSTED")
    poll_interval: float = _opt(5.0, "seconds between registry scans for new, changed and removed versions (0 = never)")
    registry_timeout: float = _opt(120.0, "seconds one registry read (a scan, a model.json, a weights file) may take; "
                                          "past it the read is abandoned on its thread and that version FAILED, so a "
                                          "hung network mount cannot stall serving or shutdown")
    preprocess_workers: int = _opt(2, "threads decoding and resizing images")
    max_images_per_request: int = _opt(256, "most images in one request")
    max_message_bytes: int = _opt(64 * 1024 * 1024, "largest request message in bytes")
    max_image_bytes: int = _opt(32 * 1024 * 1024, "largest encoded image in bytes")
    max_image_pixels: int = _opt(40_000_000, "most pixels (width x height) in one image; larger ones are refused before decoding")
    cache_bytes: int = _opt(0, "response cache size in bytes: the same encoded image for the same model version and "
                               "options is answered from memory, with no decoding or inference (0 = off; "
                               "docs/operations.md)")
    grace_seconds: float = _opt(10.0, "on SIGTERM, how long calls in flight may take to finish")
    tls_cert: Optional[Path] = _opt(None, "PEM server certificate (enables TLS, with --tls-key)")
    tls_key: Optional[Path] = _opt(None, "PEM server private key")
    tls_client_ca: Optional[Path] = _opt(None, "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
    auth_token_file: Optional[Path] = _opt(None, "file holding the bearer token callers must send (authorization: Bearer <token>)")
    log_level: str = _opt("info", "debug, info, warning or error", choices=("debug", "info", "warning", "error"))
    log_format: str = _opt("json", "json (one object per line) or text", choices=("json", "text"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices:
                _check(getattr(self, f.name) in choices, f.name, getattr(self, f.name), " | ".join(choices))
        _check(self.port >= 0 and self.port < 65536, "port", self.port, "a TCP port 0..65535")
        _check(-1 <= self.metrics_port < 65536, "metrics_port", self.metrics_port, "a TCP port, 0 or -1")
        _check(-1 <= self.http_port < 65536, "http_port", self.http_port, "a TCP port, 0 or -1")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", self.device, "cpu, cuda, cuda:N or auto")
        _check(self.threads >= 0, "threads", self.threads, ">= 0")
        _check(self.max_batch_size >= 1, "max_batch_size", self.max_batch_size, ">= 1")
        _check(self.max_delay_ms >= 0, "max_delay_ms", self.max_delay_ms, ">= 0")
        _check(self.max_concurrent_batches >= 0, "max_concurrent_batches", self.max_concurrent_batches, ">= 0")
        _check(self.max_queue >= 1, "max_queue", self.max_queue, ">= 1")
        _check(self.poll_interval >= 0, "poll_interval", self.poll_interval, ">= 0")
        _check(self.registry_timeout > 0, "registry_timeout", self.registry_timeout, "> 0")
        _check(self.preprocess_workers >= 1, "preprocess_workers", self.preprocess_workers, ">= 1")
        _check(self.max_images_per_request >= 1, "max_images_per_request", self.max_images_per_request, ">= 1")
        _check(self.max_message_bytes >= 1024, "max_message_bytes", self.max_message_bytes, ">= 1024")
        _check(self.max_image_bytes >= 1, "max_image_bytes", self.max_image_bytes, ">= 1")
        _check(self.max_image_pixels >= 1, "max_image_pixels", self.max_image_pixels, ">= 1")
        _check(self.cache_bytes >= 0, "cache_bytes", self.cache_bytes, ">= 0 (0 = no cache)")
        _check(self.grace_seconds >= 0, "grace_seconds", self.grace_seconds, ">= 0")
        _check((self.tls_cert is None) == (self.tls_key is None), "tls_cert", self.tls_cert,
               "given together with --tls-key")
        _check(self.tls_client_ca is None or self.tls_cert is not None, "tls_client_ca", self.tls_client_ca,
               "used with --tls-cert/--tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path = getattr(self, name)
            _check(path is None or Path(path).is_file(), name, path, "an existing file")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SettingsError(f"{flag_name(name)} (or {env_name(name)}): expected {expected}, got {value!r}")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


CONVERTERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def _converter(annotation: Any) -> Callable[[str], Any]:
    """How a flag's or env variable's text becomes the field's value: from the field's real type
    (``Optional[X]`` -> X), looked up in CONVERTERS; a type with no converter fails at start-up."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if annotation not in CONVERTERS:
        raise TypeError(f"Settings: no converter for fields of type {annotation!r}; add one to CONVERTERS")
    return CONVERTERS[annotation]


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """One flag per Settings field; the help shows the env variable and the default."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(Settings)  # the annotations as types, not the strings of __future__
    for f in dataclasses.fields(Settings):
        convert = _converter(hints[f.name])
        default = f.default
        raw = env.get(env_name(f.name))
        if raw is not None and raw != "":
            try:
                default = convert(raw)
            except ValueError:
                raise SettingsError(f"{env_name(f.name)}: expected {convert.__name__}, got {raw!r}") from None
        kwargs: dict[str, Any] = {"type": convert, "default": default, "dest": f.name,
                                  "help": f"{f.metadata['help']} [env {env_name(f.name)}; default: %(default)s]"}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f.name), **kwargs)


def from_namespace(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in vars(args).items() if k in names})


def parse_settings(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Settings:
    """Parse serve flags (for tests and embedding); the CLI uses add_arguments directly."""
    parser = argparse.ArgumentParser(prog="featurizer serve")
    add_arguments(parser, env)
    return from_namespace(parser.parse_args(list(argv)))
