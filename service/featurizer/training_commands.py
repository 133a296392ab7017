"""``featurizer train`` and ``featurizer visualize``: argument parsing only (the application layer).

Torch and the datasets are imported when a command runs, so building the CLI (``--help``,
``registry list``) stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featurizer.architectures.pooling import ROW_POOLINGS
from featurizer.settings import default_registry
from featurizer.training.choices import DEFAULTS, Trainable


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train a LargeNet or a head on a registry backbone, publish it as a new version",
        description="Train on an image folder (root/<class>/*.jpg) or Fashion-MNIST and publish the model, "
                    "with report.json and curves.png, as the next version of NAME in the registry.")
    parser.add_argument("--registry", type=Path, required=True, help="the registry to publish into")
    parser.add_argument("--name", required=True, help="model name to publish (a new version of it)")
    parser.add_argument("--arch", choices=[a.value for a in Trainable],
                        default=Trainable.LARGENET.value, help="what to train (default: largenet)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="an ImageFolder root: one sub-directory of images per class")
    source.add_argument("--fashion-mnist", action="store_true", help="the Debian dataset-fashion-mnist package")
    parser.add_argument("--classes", default="7,9", help="Fashion-MNIST classes to train on (default: 7,9)")
    parser.add_argument("--per-class", type=int, default=0, help="Fashion-MNIST images per class (0 = all)")
    parser.add_argument("--backbone", default="alexnet", help="feature_head: registry model[@version] or alias")
    parser.add_argument("--pooling", choices=[p.value for p in ROW_POOLINGS], default="avg",
                        help="feature_head pooling")
    parser.add_argument("--hidden", type=int, default=0, help="feature_head hidden units (0 = one linear layer)")
    parser.add_argument("--epochs", type=int, help="default: 3 (largenet), 100 (feature_head: cached features, cheap)")
    parser.add_argument("--batch-size", type=int, help="default: 128 (largenet), 16 (feature_head)")
    parser.add_argument("--lr", type=float, help="Adam learning rate; default: 3e-3 (largenet), 1e-2 (feature_head)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights and the shuffles")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.set_defaults(func=cmd_train)


def job_from_args(args: argparse.Namespace):
    """The ``TrainJob`` the flags describe; bad values raise ValueError naming the flag."""
    from featurizer.training.datasets import parse_classes
    from featurizer.training.loop import TrainSettings
    from featurizer.training.run import TrainJob

    defaults = DEFAULTS[Trainable(args.arch)]
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--per-class", args.per_class)):
        if value is not None and value < (0 if flag == "--per-class" else 1):
            raise ValueError(f"{flag}: must be a positive integer, got {value}")
    if not 0 <= args.val_fraction < 1:  # checked before any data is loaded
        raise ValueError(f"--val-fraction: must be in [0, 1), got {args.val_fraction}")
    settings = TrainSettings(epochs=args.epochs or defaults.epochs, batch_size=args.batch_size or defaults.batch_size,
                             learning_rate=args.lr or defaults.learning_rate, seed=args.seed,
                             progress=not args.no_progress)
    return TrainJob(registry=args.registry, name=args.name, architecture=args.arch, data=args.data,
                    classes=tuple(parse_classes(args.classes)), per_class=args.per_class, backbone=args.backbone,
                    pooling=args.pooling, hidden=args.hidden, val_fraction=args.val_fraction, settings=settings)


def cmd_train(args: argparse.Namespace) -> int:
    from featurizer.training.run import run

    result = run(job_from_args(args))
    last = result.history.epochs[-1]
    val = "-" if last.val_accuracy is None else f"{last.val_accuracy:.4f}"
    print(f"published {result.name}/{result.version}: labels {list(result.classes)}, "
          f"train accuracy {last.train_accuracy:.4f}, validation accuracy {val}")
    return 0


def add_visualize_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "visualize", help="draw a layer's feature maps for an image (or the first layer's filters) as a PNG grid",
        description="One tile per channel: the feature maps of --layer for IMAGE, or with --filters the first "
                    "convolution's kernels as RGB tiles. Works on any layered features model of the registry.")
    parser.add_argument("image", nargs="?", type=Path, help="the image file (not needed with --filters)")
    parser.add_argument("--model", default="alexnet", help="registry model[@version] or alias (default: alexnet)")
    parser.add_argument("--layer", help="a layer of the model, by name or index (default: its first; "
                                        "AlexNet: conv1..pool5 or 0..12, VGG-11: conv1_1..pool5 or 0..20)")
    parser.add_argument("--filters", action="store_true", help="draw the first convolution's kernels instead")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--registry", type=Path, help="registry directory (default: the demo registry)")
    parser.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace) -> int:
    from featurizer.visualize import draw, grid_shape

    registry = args.registry
    if registry is None:
        from featurizer.demo import init_demo

        registry = default_registry()
        init_demo(registry)
    count, picture = draw(registry, args.model, args.output, args.image, args.layer, args.filters)
    rows, columns = grid_shape(count)
    what = "first-layer filters" if args.filters else f"{args.layer or 'first-layer'} feature maps"
    print(f"wrote {args.output}: {count} {what} in a {rows}x{columns} grid ({picture.width}x{picture.height} pixels)")
    return 0
