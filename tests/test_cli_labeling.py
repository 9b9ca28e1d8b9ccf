"""`python -m labeling import|export` as a user runs it: JSON last line, exit code 2 and one
sentence on stderr for bad input, nothing written."""
import json
import os
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT
from tests.test_import import counts


def run(workspace, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFLOOP_HOME": str(workspace), "OMP_NUM_THREADS": "1"}
    env.pop("PREFLOOP_DB", None)
    return subprocess.run([sys.executable, "-m", "labeling", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_twice_then_export(workspace, tmp_path):
    first = last_json(run(workspace, "import", str(FIXTURES / "hh.jsonl"), "--source", "hh-demo"))
    assert first == {"imported": 2, "duplicates": 0, "format": "hh", "source": "hh-demo",
                     "dropped": {"empty": 1, "identical": 0, "duplicate_in_file": 0}}
    again = last_json(run(workspace, "import", str(FIXTURES / "hh.jsonl"), "--source", "hh-demo"))
    assert (again["imported"], again["duplicates"]) == (0, 2)
    out = last_json(run(workspace, "export", str(tmp_path / "out.jsonl")))
    assert out == {"exported": 2, "excluded": {"tie": 0, "both_bad": 0, "skip": 0, "unresolved": 0}}
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl", encoding="utf-8")]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "A word that names a person, place or thing."}]


def test_bad_input_exit_2_one_sentence_nothing_written(workspace):
    last_json(run(workspace, "import", str(FIXTURES / "unlabeled.jsonl")))
    before = counts()
    proc = run(workspace, "import", str(FIXTURES / "bad_json.jsonl"), "--format", "pairs")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad_json.jsonl, line 3: malformed JSON" in lines[0], proc.stderr
    proc = run(workspace, "import", str(FIXTURES / "unlabeled.jsonl"), "--format", "oasst")
    assert proc.returncode == 2 and "field 'prompt'" in proc.stderr
    proc = run(workspace, "import", str(FIXTURES / "pairs.jsonl"), "--format", "xml")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("unknown format 'xml'; use one of auto, pairs, "
                                                                "unlabeled, prompts, hh, oasst.")
    proc = run(workspace, "export", str(workspace / "out.jsonl"))  # the unlabeled pairs have no votes
    assert proc.returncode == 2 and "nothing to export" in proc.stderr
    assert not (workspace / "out.jsonl").exists()
    summary = last_json(run(workspace, "import", str(FIXTURES / "unlabeled.jsonl")))
    assert (summary["imported"], summary["duplicates"]) == (0, 2)
    assert counts() == before


def test_export_hf_folder(workspace, tmp_path):
    import datasets

    last_json(run(workspace, "import", str(FIXTURES / "oasst.jsonl")))
    assert last_json(run(workspace, "export", str(tmp_path / "hf"), "--format", "hf"))["exported"] == 4
    data = datasets.load_from_disk(str(tmp_path / "hf"))
    assert data.num_rows == 4 and {"prompt", "chosen", "rejected"} <= set(data.column_names)
