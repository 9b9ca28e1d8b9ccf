"""How every `python -m labeling` and `python -m training` command ends: what it did as one JSON
line, printed last (so `| tail -1` is JSON), or, for an error the user can fix, one sentence on
stderr and the command's exit code (2 for bad input)."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping


def run_command(work: Callable[[], Any], errors: Mapping[type | tuple[type, ...], int],
                ensure_ascii: bool = True, echo: bool = True) -> int:
    """Run `work` and print what it returns as JSON (unless `echo` is false: `work` printed it);
    return 0. An exception of a kind `errors` names (first match wins) prints its message on stderr
    and returns that kind's exit code; any other exception propagates."""
    try:
        summary = work()
    except tuple(kind for kinds in errors for kind in (kinds if isinstance(kinds, tuple) else (kinds,))) as exc:
        print(str(exc), file=sys.stderr)
        return next(code for kinds, code in errors.items() if isinstance(exc, kinds))
    if echo:
        print(json.dumps(summary, ensure_ascii=ensure_ascii))
    return 0
