"""Crashes and concurrent processes: the quick forms of benchmarks/crash_test.py and concurrency_test.py.

Both run in one Python process of their own (it loads the model once, forks `docqa` runs off itself and
kills them with SIGKILL), on a small corpus of real PDFs and text files. The full forms, with real
`docqa` subprocesses and more trials, record their figures in benchmarks/results/reliability.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks import concurrency_test, crash_test
work = sys.argv[2]
flags = ["--quick", "--no-record"]
code = crash_test.main([*flags, "--workdir", f"{work}/crash", "--summary", f"{work}/crash.json"])
code |= concurrency_test.main([*flags, "--workdir", f"{work}/concurrency", "--summary", f"{work}/concurrency.json"])
sys.exit(code)
"""


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("reliability")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQA_")}
    result = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT), str(work)], capture_output=True, text=True,
                            timeout=1500, env=env, check=False)
    found = {name: json.loads((work / f"{name}.json").read_text())
             for name in ("crash", "concurrency") if (work / f"{name}.json").exists()}
    found["exit"] = result.returncode
    found["output"] = f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return found


def test_ingest_killed_at_random_moments_then_rerun_loses_and_doubles_nothing(summaries: dict[str, Any]) -> None:
    assert "crash" in summaries, summaries["output"]
    crash = summaries["crash"]
    assert not crash["failures"], summaries["output"]
    assert crash["trials"] == 3
    assert crash["kills_landed"] >= 2, "the kills must hit running ingests, or nothing was tested"
    assert crash["kills_mid_write"] >= 1
    assert crash["chunks_lost"] == 0 and crash["chunks_duplicated"] == 0
    assert crash["chunks_checked"] == 3 * crash["corpus"]["chunks"]


def test_concurrent_writers_and_readers_see_a_consistent_store(summaries: dict[str, Any]) -> None:
    assert "concurrency" in summaries, summaries["output"]
    concurrency = summaries["concurrency"]
    assert not concurrency["failures"], summaries["output"]
    assert concurrency["writer_pairs_where_one_waited"] >= 1, "the two writers never overlapped"
    assert concurrency["short_lived_reads"] >= 1 and concurrency["long_lived_searches"] >= 1
    assert concurrency["chunks_lost"] == 0 and concurrency["chunks_duplicated"] == 0
    assert summaries["exit"] == 0, summaries["output"]
