"""``featurizer``: serve models, manage a registry. Run ``featurizer COMMAND --help``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from platformdirs import user_cache_dir

from . import __version__
from .settings import SettingsError, add_arguments, from_namespace

log = logging.getLogger("featurizer")


def default_registry() -> Path:
    """The embedded demo registry, created on first use, in the user's cache directory."""
    return Path(user_cache_dir("featurizer")) / "registry"


# ----- serve ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import configure_logging

    settings = from_namespace(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.registry is None:
        from .demo import init_demo

        root = default_registry()
        if not root.exists():
            log.info("no --registry given: creating the demo registry in %s", root)
        init_demo(root)
        settings = settings.replace(registry=root)
    if not Path(settings.registry).is_dir():
        raise SettingsError(f"--registry: {settings.registry} is not a directory")
    return asyncio.run(_serve(settings))


async def _serve(settings) -> int:
    from .server import FeaturizerServer

    server = FeaturizerServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"featurizer listening on {settings.host}:{server.port} (metrics on :{server.metrics_port})",
          flush=True)
    await stop.wait()
    log.info("shutting down: draining calls for up to %.1f s", settings.grace_seconds)
    await server.stop()
    return 0


# ----- registry ------------------------------------------------------------------------
def cmd_registry_init(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if args.demo:
        from .demo import init_demo

        init_demo(root)
    else:
        root.mkdir(parents=True, exist_ok=True)
    print(f"registry ready in {root}")
    return cmd_registry_list(args)


def cmd_registry_list(args: argparse.Namespace) -> int:
    from .manifest import ManifestError
    from .registry import Registry

    registry = Registry(Path(args.dir))
    scan = registry.scan()
    print(f"{'MODEL':24} {'VERSION':>7}  {'KIND':10} {'ARCHITECTURE':20} OUTPUT")
    for (model, version) in sorted(scan.versions):
        try:
            m = registry.manifest(model, version)
            print(f"{model:24} {version:>7}  {m.kind:10} {m.architecture:20} {list(m.output.shape)}")
        except ManifestError as error:
            print(f"{model:24} {version:>7}  INVALID    {error}")
    for alias, target in sorted(scan.aliases.items()):
        print(f"alias {alias} -> {target}")
    if scan.alias_error:
        print(f"aliases ignored: {scan.alias_error}")
    return 0


def cmd_registry_verify(args: argparse.Namespace) -> int:
    from .registry import Registry

    problems = Registry(Path(args.dir)).verify()
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    if not problems:
        print("all weights files match their manifests")
    return 1 if problems else 0


def cmd_registry_alias(args: argparse.Namespace) -> int:
    from .registry import Registry, parse_target

    parse_target(args.target)
    Registry(Path(args.dir)).set_alias(args.name, args.target)
    print(f"alias {args.name} -> {args.target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurizer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"featurizer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server",
                                description="Serve the models of a registry over gRPC (health, reflection, /metrics). "
                                            "Every flag can also be set as FEATURIZER_<FLAG> in the environment.")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    registry = commands.add_parser("registry", help="create, inspect and change a model registry")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a registry directory (--demo: with seeded AlexNet)")
    init.add_argument("dir", type=Path)
    init.add_argument("--demo", action="store_true", help="write the demo models")
    init.set_defaults(func=cmd_registry_init)
    lst = actions.add_parser("list", help="list models, versions and aliases")
    lst.add_argument("dir", type=Path)
    lst.set_defaults(func=cmd_registry_list)
    verify = actions.add_parser("verify", help="re-hash every weights file; non-zero exit naming each bad one")
    verify.add_argument("dir", type=Path)
    verify.set_defaults(func=cmd_registry_verify)
    alias = actions.add_parser("alias", help="point NAME at TARGET (model or model@version)")
    alias.add_argument("dir", type=Path)
    alias.add_argument("name")
    alias.add_argument("target")
    alias.set_defaults(func=cmd_registry_alias)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except SettingsError as error:
        print(f"featurizer: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"featurizer: error: {error}", file=sys.stderr)
        return 1
