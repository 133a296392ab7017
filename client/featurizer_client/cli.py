"""featurizer-client: embed, predict, list models and check health from a shell.

Exit status: 0 on success; 1 when the server refused or cannot be reached (the status and message
go to stderr), health is not SERVING, or some images of an embed/predict job failed (with
--on-error skip or collect: they are listed in the failures file); 2 for bad command-line
arguments (a --max-in-flight below 1, an image path that matches no file, a --resume of another
job's output, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

from . import __version__
from .bulk_cli import UsageError, cmd_embed, cmd_predict, embed_parser, predict_parser
from .channel import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_TARGET, TARGET_ENV, Tls, default_target, read_token
from .client import FeaturizerClient
from .errors import FeaturizerError
from .messages import ModelInfo


def _client(args: argparse.Namespace, wait_for_ready: bool = True) -> FeaturizerClient:
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_server_name:
        tls = Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    token = read_token(args.token_file) if args.token_file else None
    return FeaturizerClient(args.target, timeout=args.timeout, tls=tls, token=token, wait_for_ready=wait_for_ready,
                            connect_timeout=args.connect_timeout)


def _with_client(command: Callable[[argparse.Namespace, FeaturizerClient], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            return command(args, client)
    return run


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models()
    if args.json:
        print(json.dumps([_model_json(m) for m in models], indent=2))
        return 0
    width = max([len("ALIASES")] + [len(",".join(m.aliases)) for m in models])
    print(f"{'MODEL':24} {'VERSION':>7}  {'STATE':10} {'KIND':10} {'OUTPUT':14} {'ALIASES':{width}}  REASON")
    for m in models:
        for v in m.versions:  # REASON: why a version FAILED (or is UNLOADING); empty when it serves
            print(f"{m.name:24} {v.version:>7}  {v.state:10} {v.kind:10} {str(list(v.output_shape)):14} "
                  f"{','.join(m.aliases):{width}}  {v.reason}".rstrip())
    return 0


def _model_json(m: ModelInfo) -> dict:
    return {"name": m.name, "default_version": m.default_version, "aliases": list(m.aliases),
            "versions": [{"version": v.version, "state": v.state, "kind": v.kind, "architecture": v.architecture,
                          "output_shape": list(v.output_shape), "labels": list(v.labels), "reason": v.reason}
                         for v in m.versions]}


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args, wait_for_ready=False) as client:  # a probe answers now, it does not wait
        try:
            status = client.health(args.service)
        except FeaturizerError as error:
            if error.code.name != "NOT_FOUND":
                raise
            raise FeaturizerError(error.code, f"health: unknown service {args.service!r}; "
                                              f"{_known_services(client)}") from None
    print(status)
    return 0 if status == "SERVING" else 1


def _known_services(client: FeaturizerClient) -> str:
    """The services a health check can name, with the server's models when it lists them."""
    try:
        models = ", ".join(m.name for m in client.list_models())
    except FeaturizerError:  # e.g. a token is needed for ListModels; health needs none
        models = "a model name (see `featurizer-client models`)"
    return f"valid: '' (the whole server), featurizer.v1.Featurizer, {models or 'no models'}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurizer-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"featurizer-client {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=default_target(),
                        help=f"server address: host:port, dns:///host:port or ipv4:a:p,b:p "
                             f"[default: ${TARGET_ENV}, else {DEFAULT_TARGET}]")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per RPC [default: %(default)s]")
    common.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S,
                        help="seconds to wait for the first connection to the server before failing with "
                             "UNAVAILABLE [default: %(default)s]")
    common.add_argument("--token-file", type=Path, help="file holding the bearer token (the server's --auth-token-file)")
    common.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server certificate (enables TLS)")
    common.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mTLS (with --tls-key)")
    common.add_argument("--tls-key", type=Path, help="PEM client private key")
    common.add_argument("--tls-server-name", help="name to check the server certificate against")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    embed_parser(commands, common, _positive_int).set_defaults(func=_with_client(cmd_embed))
    predict_parser(commands, common, _positive_int).set_defaults(func=_with_client(cmd_predict))
    models = commands.add_parser("models", parents=[common], help="models, versions, states and aliases")
    models.add_argument("--json", action="store_true", help="JSON instead of a table")
    models.set_defaults(func=cmd_models)
    health = commands.add_parser("health", parents=[common], help="exit 0 only when the server is SERVING")
    health.add_argument("--service", default="", help="'' (the server), featurizer.v1.Featurizer or a model name")
    health.set_defaults(func=cmd_health)
    return parser


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so a bad value exits 2 with the flag named)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"featurizer-client: error: {error}", file=sys.stderr)
        return 2
    except FeaturizerError as error:
        print(f"featurizer-client: {error.code.name}: {error.details}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError) as error:
        print(f"featurizer-client: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
