"""Preference data in and out of the workspace.

    python -m labeling import PATH [--format auto|pairs|unlabeled|prompts|hh|oasst] [--source NAME]
    python -m labeling export PATH [--format jsonl|parquet|hf]

The last line printed is a JSON summary. Bad input exits with code 2 and one sentence on stderr,
and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys

from labeling.export import EXPORT_FORMATS, ExportError, export
from labeling.importers import FORMATS, InputError
from labeling.store import import_file


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m labeling", description="Preference data in and out of the workspace.")
    commands = p.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="import prompts, pairs or labeled pairs from a file")
    imp.add_argument("path", help="a .jsonl(.gz), .csv, .parquet or .txt file, a datasets folder, or a hub name")
    imp.add_argument("--format", default="auto", metavar="|".join(FORMATS),
                     help="what the file holds; auto decides from the extension and the first record")
    imp.add_argument("--source", default=None, help="name recorded with the data (default: the file name)")
    exp = commands.add_parser("export", help="write the judged pairs as TRL-ready prompt/chosen/rejected rows")
    exp.add_argument("path", help="output file (jsonl, parquet) or folder (hf)")
    exp.add_argument("--format", default="jsonl", metavar="|".join(EXPORT_FORMATS),
                     help="hf writes a folder that datasets.load_from_disk reads")
    return p


def main(argv: list[str] | None = None) -> int:
    # Formats are checked by import_file / export, so a wrong one gets the same one-sentence error.
    args = parser().parse_args(argv)
    try:
        if args.command == "import":
            summary = import_file(args.path, fmt=args.format, source=args.source)
        else:
            summary = export(args.path, fmt=args.format)
    except (InputError, ExportError) as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
