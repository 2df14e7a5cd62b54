"""Retrain the bundled checkpoints: ``python -m resil.models [NAME ...]``."""

import argparse
import sys

from . import build_checkpoints, names


def main(argv: list[str] | None = None) -> int:
    """Retrain the named reference models (default: all) and print their test accuracies."""
    p = argparse.ArgumentParser(prog="python -m resil.models",
                                description="Retrain the bundled reference checkpoints with their deterministic recipes and "
                                            "overwrite them (and accuracy.json) in the installed package.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"reference models to retrain (default: all): {', '.join(names())}")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in names()]
    if unknown:
        p.error(f"no reference model {', '.join(map(repr, unknown))}; the bundled ones are {', '.join(names())}")
    for name, acc in build_checkpoints(args.names or None).items():
        print(f"{name:20s} {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
