"""``data synthetic-voc ROOT`` / ``data digits ROOT``: make (or reuse) one of the generated data
sets in the folder of its parameters under ROOT, and print that folder. Training makes them on
first use; this makes one by hand (datasets/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from det_scaling.classification.digits import export_digits
from det_scaling.data.synthetic_voc import generate_synthetic_voc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="make a generated data set (the demos' VOC-layout set, the digits) by hand",
        description=__doc__,
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    voc = _kind(kinds, "synthetic-voc", "the detection demo's VOC-layout set", "synthetic_voc")
    voc.add_argument("--num-trainval", type=int, default=500)
    voc.add_argument("--num-test", type=int, default=100)
    voc.add_argument("--image-size", type=int, default=128)
    voc.add_argument("--seed", type=int, default=0)
    voc.set_defaults(func=_synthetic_voc)
    digits = _kind(kinds, "digits", "scikit-learn's digits as image folders", "digits")
    digits.add_argument("--upscale", type=int, default=32)
    digits.add_argument("--val-fraction", type=float, default=0.2)
    digits.add_argument("--seed", type=int, default=0)
    digits.add_argument(
        "--resample", default="bilinear", help="the upscaling filter: nearest, bilinear or bicubic"
    )
    digits.set_defaults(func=_digits)


def _kind(
    kinds: argparse._SubParsersAction, name: str, what: str, folder: str
) -> argparse.ArgumentParser:
    parser = kinds.add_parser(name, help=what)
    parser.add_argument(
        "root",
        type=Path,
        help=f"the folder of the sets, one subfolder per parameter set (a run's: "
        f"$DETECTRON2_DATASETS/{folder})",
    )
    return parser


def _synthetic_voc(args: argparse.Namespace) -> int:
    folder = generate_synthetic_voc(
        args.root, args.num_trainval, args.num_test, args.image_size, args.seed
    )
    print(folder)
    return 0


def _digits(args: argparse.Namespace) -> int:
    folder = export_digits(
        args.root, args.upscale, args.val_fraction, args.seed, resample=args.resample
    )
    print(folder)
    return 0
