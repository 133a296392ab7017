"""``featurizer-client embed`` and ``predict``: bulk jobs from a shell, on ``embed_to``/``predict_to``.

Exit status: 0 when every input was done; 1 when some inputs failed (``--on-error skip`` or
``collect``: they are in the failures file) or the server refused the job; 2 for bad usage.
Files inside a directory or glob that are not images by extension are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, get_args

from .jobs import Summary, prediction_json
from .journal import JournalMismatch
from .messages import DecodeName, EmbedOptions
from .sources import Scan, scan
from .window import DEFAULT_BULK_IN_FLIGHT, DEFAULT_STREAMS, Failure, OnError

if TYPE_CHECKING:
    from .client import FeaturizerClient

SHOWN = 20  # skipped files and failures named on stderr before "... and N more"


class UsageError(Exception):
    """A bad command-line argument found after parsing (exit status 2, like argparse's own)."""


def add_bulk_flags(parser: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    parser.add_argument("images", nargs="+", help="image files, directories or glob patterns")
    parser.add_argument("--model-version", dest="version", type=int, default=0, help="model version (0 = default)")
    parser.add_argument("--on-error", choices=[str(p) for p in OnError], default=str(OnError.RAISE),
                        help="an input the server refuses: raise (stop, exit 1, naming it), skip (write it to "
                             "the failures file), collect (as skip, and list it here) [default: %(default)s]")
    parser.add_argument("--max-in-flight", type=positive_int, default=DEFAULT_BULK_IN_FLIGHT,
                        help="images read and not yet written [default: %(default)s]")
    parser.add_argument("--streams", type=positive_int, default=DEFAULT_STREAMS,
                        help="concurrent streams, spread over the target's replicas [default: %(default)s]")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="kept for older scripts: streams send one image per message, the server batches")
    parser.add_argument("--resume", action="store_true",
                        help="go on from what an earlier run of the same command wrote (its journal file)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar (needs tqdm)")
    parser.add_argument("--decode", choices=get_args(DecodeName),
                        help="JPEG decoding: exact, or fast (libjpeg's reduced-scale decode, a few times faster on "
                             "large photos, embeddings within a cosine of ~0.9999) [default: the model's own]")


def scanned(args: argparse.Namespace) -> Scan:
    """The inputs, before any connection: a path that matches nothing is a usage error."""
    from .inputs import IMAGE_SUFFIXES

    try:
        found = scan(args.images)
    except FileNotFoundError as error:
        raise UsageError(f"images: {error}") from None
    if not found.images:
        raise UsageError(f"images: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(args.images)}")
    return found


def cmd_embed(args: argparse.Namespace, client: "FeaturizerClient") -> int:
    found = scanned(args)
    options = EmbedOptions(args.layer, args.pooling or "", args.normalize, args.dtype)
    try:
        summary = client.embed_to(found.images, args.output, model=args.model, version=args.version,
                                  options=options, decode=args.decode, on_error=args.on_error, resume=args.resume,
                                  dedup=args.dedup, progress=args.progress, max_in_flight=args.max_in_flight,
                                  streams=args.streams)
    except JournalMismatch as error:
        raise UsageError(f"--resume: {error}") from None
    shape = "x".join(map(str, _shape(summary)))
    report(found, summary, args.on_error, f"wrote {summary.rows} rows ({shape} {args.dtype}) to {args.output}, "
                                          f"names to {summary.paths.names}")
    return 1 if summary.failed else 0


def _shape(summary: Summary) -> tuple[int, ...]:
    import numpy as np

    return np.load(summary.paths.results, mmap_mode="r").shape


def cmd_predict(args: argparse.Namespace, client: "FeaturizerClient") -> int:
    found = scanned(args)
    if args.output is not None:
        try:
            summary = client.predict_to(found.images, args.output, model=args.model, version=args.version,
                                        top_k=args.top_k, decode=args.decode, on_error=args.on_error,
                                        resume=args.resume, progress=args.progress,
                                        max_in_flight=args.max_in_flight, streams=args.streams)
        except JournalMismatch as error:
            raise UsageError(f"--resume: {error}") from None
        report(found, summary, args.on_error, f"wrote {summary.rows} predictions to {args.output}")
        return 1 if summary.failed else 0
    policy = OnError(args.on_error)
    collected = client.predict_many(found.images, model=args.model, version=args.version, top_k=args.top_k,
                                    decode=args.decode, on_error=OnError.COLLECT if policy is OnError.SKIP else policy,
                                    max_in_flight=args.max_in_flight, streams=args.streams)
    names, predictions = [str(s) for s in collected.sources], collected.values
    if args.json:
        print(json.dumps([prediction_json(n, p) for n, p in zip(names, predictions, strict=True)], indent=2))
    elif names:
        width = max(len(n) for n in names)
        print(f"{'IMAGE':{width}}  {'LABEL':20} {'INDEX':>5}  PROBABILITY")
        for name, p in zip(names, predictions, strict=True):
            print(f"{name:{width}}  {p.label:20} {p.index:>5}  {p.probability:.4f}")
    _skipped(found)
    if collected.failures:
        print(f"featurizer-client: {len(collected.failures)} of {len(found.images)} inputs failed", file=sys.stderr)
    _failures(collected.failures, policy)
    return 1 if collected.failures else 0


def report(found: Scan, summary: Summary, on_error: str, wrote: str) -> None:
    """The job's summary on stderr: what was written, resumed, copied, skipped and refused."""
    resumed = f" (resumed after {summary.resumed_at} of {summary.total} inputs)" if summary.resumed_at else ""
    print(f"featurizer-client: {wrote}{resumed}", file=sys.stderr)
    if summary.duplicates:
        print(f"featurizer-client: {summary.duplicates} inputs were copies of earlier ones (sent once)", file=sys.stderr)
    _skipped(found)
    if summary.failed:
        print(f"featurizer-client: {summary.failed} of {summary.total} inputs failed; "
              f"listed in {summary.paths.failures}", file=sys.stderr)
    _failures(summary.failures, OnError(on_error))


def _skipped(found: Scan) -> None:
    if not found.skipped:
        return
    print(f"featurizer-client: skipped {len(found.skipped)} files that are not images by extension:", file=sys.stderr)
    _listed([str(p) for p in found.skipped])


def _failures(failures: list[Failure], on_error: OnError) -> None:
    if on_error is OnError.COLLECT and failures:
        print(f"featurizer-client: {len(failures)} failed:", file=sys.stderr)
        _listed([f"{f.describe()} [{f.code.name}]" for f in failures])


def _listed(lines: list[str]) -> None:
    for line in lines[:SHOWN]:
        print(f"  {line}", file=sys.stderr)
    if len(lines) > SHOWN:
        print(f"  ... and {len(lines) - SHOWN} more", file=sys.stderr)


def embed_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser,
                 positive_int: Callable[[str], int]) -> argparse.ArgumentParser:
    embed = commands.add_parser("embed", parents=[common], help="write feature vectors to a .npy file, with names")
    add_bulk_flags(embed, positive_int)
    embed.add_argument("-o", "--output", type=Path, required=True,
                       help="output .npy [N, D]; beside it NAME.names.txt (row i's file on line i), "
                            "NAME.failures.jsonl and NAME.journal.json (for --resume)")
    embed.add_argument("--model", default="alexnet", help="model name or alias [default: %(default)s]")
    embed.add_argument("--layer", default="", help="output layer of a features model (e.g. conv5, pool2)")
    embed.add_argument("--pooling", choices=("flatten", "avg", "max", "none"),
                       help="how a features model's map becomes a row [default: the model's own]")
    embed.add_argument("--normalize", action="store_true", help="L2-normalise every row")
    embed.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                       help="element type of the rows [default: %(default)s]")
    embed.add_argument("--dedup", action="store_true",
                       help="send files with identical bytes once and copy their row (sha256 of the content)")
    return embed


def predict_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser,
                   positive_int: Callable[[str], int]) -> argparse.ArgumentParser:
    predict = commands.add_parser("predict", parents=[common], help="top classes per image")
    add_bulk_flags(predict, positive_int)
    predict.add_argument("--model", required=True, help="classifier or head model name or alias")
    predict.add_argument("--top-k", type=int, default=0, help="classes per image (0 = 5, or all when fewer)")
    predict.add_argument("--json", action="store_true", help="JSON instead of a table")
    predict.add_argument("-o", "--output", type=Path,
                         help="write JSON lines (one per image, naming it) here instead of stdout, with a "
                              "failures file and a journal beside it (for --resume)")
    return predict
