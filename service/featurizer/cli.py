"""``featurizer``: serve models, manage a registry. Run ``featurizer COMMAND --help``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


from featurizer import __version__
from featurizer.architectures import Pooling
from featurizer.registry.manifest import InputMode, Kind
from featurizer.settings import (InvalidOption, InvalidSetting, SettingsError, add_arguments, default_registry, env_name, flag_name,
                                 from_namespace)

log = logging.getLogger("featurizer")
# Plain text: the module docstring's ``markup`` would show as is in --help.
DESCRIPTION = "Serve models, manage a registry. Run 'featurizer COMMAND --help' for a command's flags."


# ----- serve ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from featurizer.logs import configure_logging

    settings = from_namespace(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.registry is None:
        from featurizer.demo import init_demo

        root = default_registry()
        if not root.exists():
            log.info("no --registry given: creating the demo registry in %s", root)
        init_demo(root)
        settings = settings.replace(registry=root)
    if settings.registry is None or not Path(settings.registry).is_dir():
        raise SettingsError(f"--registry: {settings.registry} is not a directory")
    return asyncio.run(_serve(settings))


async def _serve(settings) -> int:
    from featurizer.rpc.server import FeaturizerServer

    server = FeaturizerServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    metrics = "metrics off" if server.metrics_port is None else f"metrics on :{server.metrics_port}"
    print(f"featurizer listening on {settings.host}:{server.port} ({metrics})", flush=True)
    await stop.wait()
    log.info("shutting down: draining calls for up to %.1f s", settings.grace_seconds)
    await server.stop()
    return 0


# ----- registry ------------------------------------------------------------------------
def cmd_registry_init(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if args.demo:
        from featurizer.demo import init_demo

        init_demo(root)
    else:
        root.mkdir(parents=True, exist_ok=True)
    print(f"registry ready in {root}")
    return cmd_registry_list(args)


def cmd_registry_list(args: argparse.Namespace) -> int:
    from featurizer.registry.manifest import ManifestError
    from featurizer.registry.registry import Registry

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
    from featurizer.registry.registry import Registry

    problems = Registry(Path(args.dir)).verify()
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    if not problems:
        print("all weights files match their manifests")
    return 1 if problems else 0


def cmd_registry_alias(args: argparse.Namespace) -> int:
    from featurizer.registry.registry import Registry

    Registry(Path(args.dir)).set_alias(args.name, args.target)
    print(f"alias {args.name} -> {args.target}")
    return 0


def _manifest_from_args(args: argparse.Namespace) -> dict:
    """--manifest JSON, then any manifest flags on top of it (flags win)."""
    from featurizer.registry.publishing import manifest_from_json

    raw = manifest_from_json(args.manifest) if args.manifest else {}
    for key in ("kind", "architecture", "description"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    if args.params is not None:
        raw["params"] = args.params
    spec = {k: getattr(args, k) for k in ("resize", "height", "width", "mean", "std") if getattr(args, k) is not None}
    if args.input_mode is not None or spec:
        raw["input"] = {**raw.get("input", {}), **({"mode": args.input_mode} if args.input_mode else {}), **spec}
    if args.backbone is not None:
        model, _, version = args.backbone.partition("@")
        raw["backbone"] = {"model": model, "version": int(version) if version.isdigit() else version}
    labels = args.labels.split(",") if args.labels else (
        args.labels_file.read_text(encoding="utf-8").splitlines() if args.labels_file else None)
    if labels is not None or args.output_shape is not None:
        raw["output"] = {**raw.get("output", {}), **({"labels": labels} if labels is not None else {}),
                         **({"shape": args.output_shape} if args.output_shape is not None else {})}
    return raw


def cmd_registry_add(args: argparse.Namespace) -> int:
    from featurizer.registry.publishing import add_version
    from featurizer.registry.registry import Registry

    version = add_version(Registry(Path(args.dir)), args.model, _manifest_from_args(args), args.weights, args.version)
    print(f"published {args.model}@{version}")
    return 0


def cmd_registry_import(args: argparse.Namespace) -> int:
    from featurizer.registry.publishing import import_torchvision
    from featurizer.registry.registry import Registry

    model = args.model or (f"{args.arch}-classifier" if args.classifier else args.arch)
    version = import_torchvision(Registry(Path(args.dir)), model, arch=args.arch, weights_file=args.weights_file,
                                 layer=args.layer, pooling=args.pooling, classifier=args.classifier,
                                 version=args.version)
    print(f"published {model}@{version}")
    return 0


def _add_publish_parsers(actions) -> None:
    add = actions.add_parser("add", help="publish a safetensors weights file as a new version",
                             description="Publish FILE with a manifest from --manifest and/or flags (flags win). "
                                         "The sha256 is computed; the weights must fit the architecture.")
    add.add_argument("dir", type=Path, help="the registry directory")
    add.add_argument("--model", required=True, help="model name")
    add.add_argument("--from", dest="weights", type=Path, required=True, metavar="FILE", help="weights (.safetensors)")
    add.add_argument("--manifest", type=Path, help="a model.json to start from")
    add.add_argument("--version", type=int, help="version number (default: the next free one)")
    add.add_argument("--kind", choices=[k.value for k in Kind],
                     help="features: image to feature vectors; classifier: image to labels; "
                          "head: labels from a backbone's features (with --backbone)")
    add.add_argument("--architecture", help="builder name, e.g. alexnet_features, largenet, feature_head")
    add.add_argument("--params", type=json.loads, help='builder params as JSON, e.g. \'{"layer": "conv3"}\'')
    add.add_argument("--input-mode", choices=[m.value for m in InputMode],
                     help="resize_crop: short side to --resize, centre crop; resize: to --height x --width; "
                          "native: as sent")
    add.add_argument("--resize", type=int, help="resize_crop: pixels of the short side before cropping")
    add.add_argument("--height", type=int, help="input height in pixels (resize_crop, resize)")
    add.add_argument("--width", type=int, help="input width in pixels (resize_crop, resize)")
    add.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                     help="per-channel mean subtracted after scaling to [0, 1]")
    add.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                     help="per-channel std divided by after subtracting the mean")
    add.add_argument("--backbone", metavar="MODEL@VERSION", help="heads: the features model they sit on")
    add.add_argument("--labels", help="comma-separated label names")
    add.add_argument("--labels-file", type=Path, help="label names, one per line")
    add.add_argument("--output-shape", type=int, nargs="+", help="per-image output shape (-1 = input-dependent)")
    add.add_argument("--description", help="one line about the model, kept in its manifest")
    add.set_defaults(func=cmd_registry_add)
    imp = actions.add_parser("import-torchvision", help="publish torchvision AlexNet weights",
                             description="Publish AlexNet from a saved state dict (torch.load weights_only=True) or, "
                                         "without --weights-file on a connected machine, IMAGENET1K_V1.")
    imp.add_argument("dir", type=Path, help="the registry directory")
    imp.add_argument("--arch", required=True, choices=("alexnet",), help="the torchvision architecture")
    imp.add_argument("--weights-file", type=Path, help="a torch.save'd state_dict (torchvision key names)")
    imp.add_argument("--model", help="model name (default: alexnet, or alexnet-classifier)")
    imp.add_argument("--version", type=int, help="version number (default: the next free one)")
    imp.add_argument("--layer", default="pool5", help="cut `features` after this layer (conv1..pool5 or 0..12)")
    imp.add_argument("--pooling", default=Pooling.FLATTEN.value, choices=[p.value for p in Pooling],
                     help="how the cut's feature map becomes a row [default: %(default)s]")
    imp.add_argument("--classifier", action="store_true", help="the whole network with ImageNet labels")
    imp.set_defaults(func=cmd_registry_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurizer", description=DESCRIPTION)
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
    _add_publish_parsers(actions)
    from featurizer.training_commands import add_train_parser, add_visualize_parser

    add_train_parser(commands)
    add_visualize_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except SettingsError as error:
        print(f"featurizer: error: {error}", file=sys.stderr)
        return 2
    except InvalidSetting as error:
        print(f"featurizer: error: {flag_name(error.setting)} (or {env_name(error.setting)}): {error.problem}",
              file=sys.stderr)
        return 1
    except InvalidOption as error:
        print(f"featurizer: error: {flag_name(error.option)}: {error.problem}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"featurizer: error: {error}", file=sys.stderr)
        return 1
