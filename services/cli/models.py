"""`task-manager models list|download`: see which official weights are installed, and fetch them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from shared import modelfiles
from shared.contracts import catalog


def register(subparsers: Any) -> None:
    """Add the `models` command (with `list` and `download`) to an argparse subparsers object.

    Each leaf parser sets `func`, which takes the parsed namespace and returns the exit status.
    """
    models = subparsers.add_parser("models", help="list and download model weights")
    commands = models.add_subparsers(dest="models_command", required=True, metavar="{list,download}")

    listing = commands.add_parser("list", help="show the official models and whether they are installed")
    listing.add_argument("--dir", type=Path, default=None, help="model dir (default: $TM_MODEL_DIR or ~/.cache)")
    listing.set_defaults(func=list_models)

    fetch = commands.add_parser("download", help="download official weights and check their sha256")
    fetch.add_argument("names", nargs="*", type=_model_name, metavar="NAME", help="model names")
    fetch.add_argument("--all", action="store_true", help="download every official model")
    fetch.add_argument("--dir", type=Path, default=None, help="model dir (default: $TM_MODEL_DIR or ~/.cache)")
    fetch.add_argument(
        "--mirror",
        default=os.environ.get("TM_MODEL_MIRROR") or None,
        metavar="URL",
        help=f"use URL in place of {catalog.OFFICIAL_URL_PREFIX} (air-gapped deployments; default: $TM_MODEL_MIRROR)",
    )
    fetch.set_defaults(func=download_models)


def _model_name(value: str) -> str:
    # Not argparse's `choices`: with nargs="*" it refuses the empty list before --all is looked at.
    if value not in catalog.MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {value!r} (choose from {', '.join(catalog.MODELS)})")
    return value


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


def list_models(args: argparse.Namespace) -> int:
    """Print a table of the official models: name, scale, size, installed, path."""
    model_dir = args.dir or modelfiles.default_model_dir()
    rows = [("NAME", "SCALE", "SIZE", "INSTALLED", "PATH")]
    for spec in catalog.MODELS.values():
        path = modelfiles.weight_path(spec.name, model_dir)
        installed = "yes" if path.is_file() else "no"
        rows.append((spec.name, f"x{spec.scale}", _size(spec.size_bytes), installed, str(path)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def download_models(args: argparse.Namespace) -> int:
    """Download the models named (NAME ...) or all of them (--all); exit status 1 if any download failed.

    An interrupted download is continued where it stopped (modelfiles.download)."""
    if args.all == bool(args.names):
        raise SystemExit("error: models download takes either NAME ... or --all")
    model_dir = args.dir or modelfiles.default_model_dir()
    names = list(catalog.MODELS) if args.all else list(dict.fromkeys(args.names))
    # realesr-general-x4v3's denoise_strength needs the wdn weights too, as Real-ESRGAN's script fetches both.
    if catalog.DENOISE_MODEL in names and catalog.DENOISE_HELPER not in names:
        names.append(catalog.DENOISE_HELPER)
    failed = 0
    for name in names:
        spec = catalog.get(name)
        print(f"{name}: downloading {_size(spec.size_bytes)} from {modelfiles.download_url(name, args.mirror)}")
        try:
            path = modelfiles.download(name, model_dir, args.mirror)
        except modelfiles.DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ok, sha256 verified: {path}")
    if failed:
        raise SystemExit(f"error: {failed} of {len(names)} downloads failed")
    return 0
