"""`python -m uringserve doctor [--json]`: what this kernel offers and what is missing."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uringserve")
    sub = parser.add_subparsers(dest="cmd", required=True)
    doc = sub.add_parser("doctor", help="report io_uring support and the features uringserve uses")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.cmd == "doctor":
        from .diagnose import format_report, report

        rep = report()
        print(json.dumps(rep, indent=2) if args.json else format_report(rep))
        return 0 if rep["usable"] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
