"""Preference data in and out of the workspace.

    python -m labeling import PATH [--format auto|pairs|unlabeled|prompts|hh|oasst|messages] [--source NAME]
    python -m labeling export PATH [--format jsonl|parquet|hf] [--source NAME] [--exclude CHECK,...] [--unpaired]
    python -m labeling export-demonstrations PATH   # written answers as TRL messages JSON lines
    python -m labeling imports                 # every import and what it brought
    python -m labeling delete-import NAME      # one import's pairs, labels and unused prompts
    python -m labeling backup FILE             # the whole workspace database in one file
    python -m labeling restore FILE            # ... into the empty database at PREFLOOP_DB
    python -m labeling add-user NAME [--role annotator|admin] [--users FILE]   (password on stdin)

The last line printed is a JSON summary. Bad input exits with code 2 and one sentence on stderr,
and nothing is written.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from labeling import access, backup, demonstrations, imports
from labeling.command import run_command
from labeling.export import AUDIT_CHECKS, EXPORT_FORMATS, ExportError, export
from labeling.importers import FORMATS, InputError
from labeling.planning import ReaderError
from labeling.store import import_file


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m labeling", description="Preference data in and out of the workspace.")
    commands = p.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="import prompts, pairs or labeled pairs from a file")
    imp.add_argument("path", help="a .jsonl(.gz), .csv, .parquet or .txt file, a datasets folder, or a hub name")
    imp.add_argument("--format", default="auto", metavar="|".join((*FORMATS, "messages")),
                     help="what the file holds; auto decides from the extension and the first record; messages: "
                          "demonstrations, each row's `messages` ending with the assistant's answer (for SFT)")
    imp.add_argument("--source", default=None, help="name recorded with the data (default: the file name)")
    exp = commands.add_parser("export", help="write the judged pairs as TRL-ready prompt/chosen/rejected rows")
    exp.add_argument("path", help="output file (jsonl, parquet) or folder (hf)")
    exp.add_argument("--format", default="jsonl", metavar="|".join(EXPORT_FORMATS),
                     help="hf writes a folder that datasets.load_from_disk reads")
    exp.add_argument("--source", default=None, help="only the pairs of this source (an import's name, or a model version)")
    exp.add_argument("--unpaired", action="store_true",
                     help="TRL's unpaired rows for KTO: prompt, completion, label (chosen true, rejected false)")
    exp.add_argument("--exclude", default="", metavar=",".join(AUDIT_CHECKS),
                     help="leave out the pairs the pair audit flags under these checks (comma-separated)")
    demos = commands.add_parser("export-demonstrations", help="write the answers people wrote (and imported "
                                                              "demonstrations) as TRL messages JSON lines")
    demos.add_argument("path", help="output .jsonl file")
    commands.add_parser("imports", help="list the imports: prompts, pairs and labels each brought")
    delete = commands.add_parser("delete-import", help="delete one import's pairs and their judgments, and its "
                                                       "prompts and responses that nothing else uses")
    delete.add_argument("name", help="the import's source name, as `imports` lists it")
    save = commands.add_parser("backup", help="write the whole workspace database to one portable file")
    save.add_argument("path", help="output file, gzip'd JSON lines (e.g. workspace.jsonl.gz)")
    load = commands.add_parser("restore", help="load a backup into the empty database at PREFLOOP_DB")
    load.add_argument("path", help="a file written by `backup`")
    user = commands.add_parser("add-user", help="add or replace a user of the sign-in (password read from stdin)")
    user.add_argument("name")
    user.add_argument("--role", default="annotator", choices=access.ROLES)
    user.add_argument("--users", default=None, help="users file (default: $PREFLOOP_USERS)")
    return p


def add_user(args) -> dict:
    path = args.users or os.environ.get("PREFLOOP_USERS")
    if not path:
        raise access.AccessError("Name the users file with --users FILE or PREFLOOP_USERS.")
    password = getpass.getpass(f"Password for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    access.add_user(Path(path), args.name, password, args.role)
    return {"user": args.name, "role": args.role, "users": str(path)}


COMMANDS = {
    # Formats are checked by import_file / export, so a wrong one gets the same one-sentence error.
    "import": lambda args: (demonstrations.import_messages(args.path, args.source) if args.format == "messages"
                            else import_file(args.path, fmt=args.format, source=args.source)),
    "export-demonstrations": lambda args: demonstrations.export_messages(args.path),
    "export": lambda args: export(args.path, fmt=args.format, source=args.source, unpaired=args.unpaired,
                                  exclude=tuple(c.strip() for c in args.exclude.split(",") if c.strip())),
    "imports": lambda args: {"imports": imports.list_imports()},
    "delete-import": lambda args: imports.delete_import(args.name),
    "backup": lambda args: backup.backup(args.path),
    "restore": lambda args: backup.restore(args.path),
    "add-user": add_user,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: COMMANDS[args.command](args), {
        (InputError, ExportError, imports.UnknownImport, backup.BackupError, access.AccessError,
         demonstrations.DemonstrationError): 2,
        ReaderError: 1,  # the reader process died: not the file's fault, nothing written
    })

if __name__ == "__main__":
    sys.exit(main())
