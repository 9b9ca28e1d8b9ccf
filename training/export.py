"""`python -m training export --version ID --folder OUT`: a policy version with every adapter of its
lineage merged in, written as a standalone folder that `AutoModelForCausalLM.from_pretrained` loads.

The Train page runs it as a background job: loading, merging and saving a model takes seconds for
SmolLM2 and minutes for a larger one, too long to hold up the page. Not a heavy job: it may run
beside a training round.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training import runner


@dataclass
class ExportConfig:
    """Export a policy version as a merged standalone model folder."""

    version: str = field(default="", metadata={"help": "Policy version to export (see the versions table)."})
    folder: str = field(default="", metadata={"help": "New or empty folder to write the model to."})


def run(config: ExportConfig, reporter, **_) -> dict[str, Any]:
    """export_merged under the job's reporter; its VersionError is the one sentence a failed job shows."""
    from training import versions

    reporter.start(1)
    path = versions.export_merged(config.version, config.folder)
    reporter.step(1)
    return {"exported": config.version, "path": str(path)}


def main(argv: list[str]) -> int:
    """`python -m training export --version ID --folder OUT [--job-id N]`."""
    return runner.run_main(argv, ExportConfig, run, "python -m training export")
