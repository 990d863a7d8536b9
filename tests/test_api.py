"""The Python API (docqa.open_store): the README's example as written, and each verb against a real store."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import docqa
from testkit.fake_llm import FakeLLMServer, last_tool_results, tool_call_response
from testkit.kv_policy import nested_kv_policy
from tests.test_agent import kv_question, kv_sample

ROOT = Path(__file__).parent.parent
README_URL = 'base_url="http://localhost:11434/v1"'


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"## Python\n.*?```python\n(.*?)```", text, re.DOTALL).group(1)


def reader_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Search once, then answer with words of what was found (so the answer has a citation)."""
    if not last_tool_results(body):
        return tool_call_response("archival_memory_search", {"query": "nested key-value data",
                                                             "request_heartbeat": True})
    return tool_call_response("send_message", {"message": "From the lost-in-the-middle key-value retrieval data."})


def run_example(code: str, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "SOURCES.md", cwd / "data" / "SOURCES.md")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_readme_example_runs_as_written_and_against_a_server(tmp_path: Path) -> None:
    code = readme_example()
    assert README_URL in code
    alone = run_example(code, tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "1 file(s) ingested" in alone.stdout
    assert "SOURCES.md page 1" in alone.stdout
    assert "error" in alone.stdout.splitlines()[-1]  # no LLM server here: a status and the reason, no traceback
    with FakeLLMServer(reader_policy) as server:
        served = run_example(code.replace(README_URL, f'base_url="{server.base_url}"'), tmp_path)
    assert served.returncode == 0, served.stderr
    assert "0 failed" in served.stdout and "1 unchanged" in served.stdout  # the second run added nothing
    assert served.stdout.splitlines()[-1].startswith(str(tmp_path / "data" / "SOURCES.md"))  # a citation


def test_ingest_search_pages_delete_and_ask(tmp_path: Path) -> None:
    pairs, key, expected, chain = kv_sample(3, 0)
    docs = tmp_path / "pairs"
    docs.mkdir()
    for i, (k, v) in enumerate(pairs):
        (docs / f"pair-{i:03d}.txt").write_text(f"Key-value pair: key = {k}, value = {v}\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    store = docqa.open_store(tmp_path / "store")
    notes: list[str] = []
    report = store.ingest([docs], on_notice=notes.append)
    assert report.files_ingested == len(pairs) and len(report.files_failed) == 1
    assert any("broken.pdf" in note for note in notes)
    first, second = store.search("Key-value pair", page=0), store.search("Key-value pair", page=1)
    assert len(first.hits) == len(second.hits) == 5
    assert not {h.record.id for h in first.hits} & {h.record.id for h in second.hits}
    top = store.search(key, page=0, page_size=1, mode="lexical").hits[0]
    assert top.record.text.startswith(f"Key-value pair: key = {key}")
    unused = next(i for i, (k, _) in enumerate(pairs) if k not in chain and k != expected)
    removed, missing = store.delete([docs / f"pair-{unused:03d}.txt", tmp_path / "nowhere.txt"])
    assert removed == [str(docs / f"pair-{unused:03d}.txt")] and missing == [str(tmp_path / "nowhere.txt")]
    assert len(store.documents()) == len(pairs) - 1
    with FakeLLMServer(nested_kv_policy) as server:
        answer = store.ask(kv_question(key), model="fake", base_url=server.base_url)
    assert answer.status == "answered", answer.error
    assert answer.answer == expected
    assert answer.citations and answer.llm_calls == len(server.requests)


def test_ask_uses_the_servers_only_model_and_its_window_as_the_command_does(tmp_path: Path) -> None:
    pairs, key, expected, _ = kv_sample(1, 0)
    docs = tmp_path / "pairs"
    docs.mkdir()
    for i, (k, v) in enumerate(pairs):
        (docs / f"pair-{i:03d}.txt").write_text(f"Key-value pair: key = {k}, value = {v}\n")
    store = docqa.open_store(tmp_path / "store")
    store.ingest([docs])
    events: list[tuple[str, dict[str, Any]]] = []
    with FakeLLMServer(nested_kv_policy, models=["only-model"], model_info={"max_model_len": 6000}) as server:
        answer = store.ask(kv_question(key), base_url=server.base_url, on_event=lambda *event: events.append(event))
    assert answer.status == "answered", answer.error
    assert answer.answer == expected
    assert {body["model"] for body in server.requests} == {"only-model"}
    said = " ".join(data.get("message", "") for kind, data in events if kind == "server")
    assert "only-model" in said and "6,000 tokens, from the server" in said


def test_ask_without_a_key_for_openai_is_an_error_status_not_an_exception(tmp_path: Path) -> None:
    store = docqa.open_store(tmp_path / "store")
    result = store.ask("anything", model="gpt-4o-mini")
    assert result.status == "error" and "API key" in result.error


LEAVES_THE_PROCESS_ALONE = """
import json, os, sys
import chromadb, onnxruntime, sentence_transformers, torch  # what they set themselves is not docqa's doing
before = dict(os.environ)
calls = []
set_threads = torch.set_num_threads
torch.set_num_threads = lambda n: (calls.append(n), set_threads(n))
import docqa
store = docqa.open_store(sys.argv[1])
report = store.ingest([sys.argv[2]])
hits = store.search("zqxprocess", mode="hybrid").hits
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
found = any("zqxprocess" in hit.record.text for hit in hits)
print(json.dumps({"changed": changed, "thread_calls": calls, "found": found}))
"""


def test_the_library_leaves_its_callers_process_alone(tmp_path: Path) -> None:
    """No environment variable set, and torch's process-wide thread count never touched, by an ingest and a
    hybrid search through the API (the `docqa` command tunes its own process; a library caller's is theirs)."""
    import json

    document = tmp_path / "notes.txt"
    document.write_text("Quarterly notes. The process code is zqxprocess, kept in the binder.\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in
           ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_WAIT_POLICY",
            "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", LEAVES_THE_PROCESS_ALONE, str(tmp_path / "store"), str(document)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"changed": [], "thread_calls": [], "found": True}
