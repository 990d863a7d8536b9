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


SERVER_RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks import server_crash_test
sys.exit(server_crash_test.main(["--quick", "--no-record", "--workdir", sys.argv[2], "--summary", sys.argv[3]]))
"""


def test_server_mode_survives_killed_ingests_and_a_killed_or_stopped_server(tmp_path: Path) -> None:
    """The quick form of benchmarks/server_crash_test.py: a real `chroma run`, two ingests SIGKILLed, then the
    server itself SIGKILLed and SIGSTOPped mid-ingest (a 5 s time limit); each re-run equals a clean ingest."""
    summary = tmp_path / "server.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQA_")}
    result = subprocess.run([sys.executable, "-c", SERVER_RUNNER, str(ROOT), str(tmp_path / "work"), str(summary)],
                            capture_output=True, text=True, timeout=1500, env=env, check=False)
    output = f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    assert summary.exists(), output
    found = json.loads(summary.read_text())
    crash, faults = found["server_crash"], found["server_faults"]
    for section in (crash, faults):
        assert not section["failures"], output
        assert section["chunks_lost"] == section["chunks_duplicated"] == 0, output
        assert section["tracebacks"] == section["hangs"] == 0, output
        assert section["chunks_checked"] == section["trials"] * section["corpus"]["chunks"], output
    assert crash["trials"] == 2 and crash["kills_landed"] >= 1, output
    # Both faults hit a running ingest and ended it in the one-line error.
    assert faults["faults"] == {"kill, restart": 1, "stop, resume": 1, "stop, kill, restart": 0}, output
    assert faults["faults_landed"] == faults["one_line_errors"] == 2, output
    assert result.returncode == 0, output


FAULTS = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks import fault_test
sys.exit(fault_test.main(["--quick", "--no-record", "--summary", sys.argv[2]]))
"""


def test_damaged_files_and_full_disks_end_in_a_clean_store_or_one_line_then_a_repair(tmp_path: Path) -> None:
    """The quick form of benchmarks/fault_test.py: 5 damaged files of each kind and 2 disks that fill mid-ingest."""
    summary_path = tmp_path / "faults.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQA_")}
    result = subprocess.run([sys.executable, "-c", FAULTS, str(ROOT), str(summary_path)], capture_output=True,
                            text=True, timeout=1500, env=env, check=False)
    output = f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    assert summary_path.exists(), output
    faults = json.loads(summary_path.read_text())
    assert not faults["failures"] and result.returncode == 0, output
    assert faults["corruption_trials"] == 5 and faults["repairs"] >= 4, output
    assert faults["disk_full_trials"] == 2 or "cannot mount a tmpfs here" in result.stdout, output
    assert faults["tracebacks"] == faults["hangs"] == faults["crashes"] == 0
    assert faults["chunks_lost"] == 0 and faults["chunks_duplicated"] == 0
    assert faults["chunks_checked"] == faults["trials"] * faults["corpus"]["chunks"], "each must end complete"


def test_a_vector_index_damaged_by_a_crash_is_rebuilt_by_the_next_ingest(tmp_path: Path, embedder: Any) -> None:
    from docqa.archive.chroma import local_client
    from testkit.documents import real_text_paragraphs, write_text
    from tests.helpers import invoke, invoke_json, open_store, search_json

    store = tmp_path / "store"
    # Chroma saving its index every 8 vectors, so that this small store has saved index files to damage.
    local_client(store).create_collection("docqa", embedding_function=None,
                                           metadata={"hnsw:space": "cosine", "hnsw:sync_threshold": 8})
    corpus = tmp_path / "corpus"
    write_text(corpus / "a.txt", "\n\n".join(real_text_paragraphs(12)) + "\nThe code word is zqxdamaged.")
    write_text(corpus / "b.txt", "\n\n".join(real_text_paragraphs(24)[12:]))
    assert invoke_json("ingest", corpus)[0].exit_code == 0
    chunks = open_store().count()
    saved = list((store / "chroma").glob("*/index_metadata.pickle"))
    assert chunks > 8 and saved
    for path in saved:
        path.write_bytes(b"")  # what a kill in the middle of Chroma's save leaves

    broken = invoke("search", "zqxdamaged")
    assert broken.exit_code == 1
    assert "vector index" in broken.stderr and "docqa repair" in broken.stderr and "docqa ingest" in broken.stderr

    repaired = invoke("ingest", corpus)
    assert repaired.exit_code == 0, repaired.stderr
    assert f"rebuilding it from the catalog: {chunks} chunks" in repaired.stderr
    hits = search_json("zqxdamaged", "--mode", "dense", "--page-size", 50)["results"]
    assert len(hits) == min(chunks, 50) and any("zqxdamaged" in hit["text"] for hit in hits)
    store_obj = open_store()
    assert set(store_obj.collection.get(include=[])["ids"]) == store_obj.catalog.current_ids()
