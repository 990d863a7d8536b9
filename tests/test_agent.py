"""The agent against a real OpenAI-protocol HTTP server on localhost playing deterministic policies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from docqa.archive.store import ArchivalStore
from docqa.bench.nested_kv_data import load_samples, passage
from docqa.cli.config import resolve
from docqa.cli.main import main
from docqa.ingest.pipeline import Ingestor
from testkit.fake_llm import FakeLLMServer, last_tool_results, scripted_policy, text_response, tool_call_response
from testkit.kv_policy import nested_kv_policy, previous_searches

DATA = Path(__file__).parent.parent / "data" / "nested_kv"
SECRET = "sk-test-SECRET-0123456789"


def kv_sample(lookups: int, sample: int) -> tuple[list[tuple[str, str]], str, str, list[str]]:
    """A nested-KV sample built as the paper's code did: (pairs, query key, expected value, chain keys)."""
    level = lookups - 1
    built = load_samples(DATA, [level], sample + 1)[sample]
    return built.pairs, built.query_key, built.expected, built.chain


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, list[str]]:
    root = tmp_path_factory.mktemp("kv")
    pairs, key, expected, chain = kv_sample(3, 0)
    docs = root / "pairs"
    docs.mkdir()
    for i, (k, v) in enumerate(pairs):
        (docs / f"pair-{i:03d}.txt").write_text(passage(k, v) + "\n")
    store_dir = root / "store"
    store = ArchivalStore(resolve(store_dir=store_dir))
    report = Ingestor(store, progress=False, notice=lambda m: None).run([docs])
    assert report.files_ingested == 140 and not report.files_failed
    return store_dir, key, expected, chain


def run(args: list[str], input: str | None = None) -> Any:
    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


def ask_json(server: FakeLLMServer, store: Path, question: str, *extra: str) -> tuple[Any, dict[str, Any]]:
    result = run(["ask", question, "--store", str(store), "--model", "fake", "--base-url", server.base_url,
                  "--json", *extra])
    return result, json.loads(result.stdout)


def kv_question(key: str) -> str:
    return (f"Find the value associated with the key: {key}. If a value itself is also a key, "
            "return the value of that key (do a nested lookup). Answer only with the final value.")


def test_three_hop_nested_kv_answer_with_citations(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, expected, chain = kv_store
    with FakeLLMServer(nested_kv_policy) as server:
        result, payload = ask_json(server, store, kv_question(key))
    assert result.exit_code == 0, result.output
    assert payload["status"] == "answered"
    assert payload["answer"] == expected
    searches = [s["arguments"]["query"] for s in payload["steps"] if s["function"] == "archival_memory_search"]
    # One search per hop, then one that shows the final value is not a key.
    assert searches == [*chain, expected]
    cited = "\n".join(c["text"] for c in payload["citations"])
    for hop_key in chain:
        assert f"key = {hop_key}" in cited
    for citation in payload["citations"]:
        assert citation["text"] in Path(citation["source"]).read_text()
    assert payload["llm_calls"] == len(chain) + 2
    assert payload["prompt_tokens"] > 0 and payload["completion_tokens"] > 0


def test_json_mode_when_server_rejects_tools(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, expected, _ = kv_store
    with FakeLLMServer(nested_kv_policy, faults=["reject_tools"]) as server:
        result, payload = ask_json(server, store, kv_question(key))
        json_mode_requests = [r for r in server.requests if "tools" not in r]
    assert payload["status"] == "answered" and payload["answer"] == expected, result.output
    assert json_mode_requests, "the agent never switched to JSON mode"


def test_pagination_across_calls(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, _, _ = kv_store
    calls = [("archival_memory_search", {"query": "Key-value pair", "page": p, "request_heartbeat": True})
             for p in range(3)]
    with FakeLLMServer(scripted_policy(calls)) as server:
        _, payload = ask_json(server, store, "list some pairs")
    results = [s["result"] for s in payload["steps"] if s["function"] == "archival_memory_search"]
    assert [re.search(r"\(page (\d+)/", r).group(1) for r in results] == ["0", "1", "2"]
    keys = [re.findall(r"key = (\S+),", r) for r in results]
    flat = [k for page in keys for k in page]
    assert all(len(page) == 5 for page in keys) and len(set(flat)) == 15


def test_heartbeat_chaining_and_nudge(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, _, _ = kv_store
    calls = [("archival_memory_search", {"query": key, "request_heartbeat": True}),
             ("archival_memory_search", {"query": key, "page": 1})]
    with FakeLLMServer(scripted_policy(calls)) as server:
        _, payload = ask_json(server, store, "look it up")
        bodies = server.requests
    assert payload["status"] == "answered"
    # After the heartbeat-requested call the agent ran again at once, with no nudge in between.
    assert not any("system heartbeat" in (m.get("content") or "") for m in bodies[1]["messages"])
    # After the call without a heartbeat, the agent was nudged to go on.
    assert "system heartbeat" in bodies[2]["messages"][-1]["content"]


def test_step_limit_when_server_never_answers(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, _, _ = kv_store
    always = lambda body: tool_call_response("archival_memory_search", {"query": key, "request_heartbeat": True})  # noqa: E731
    with FakeLLMServer(always) as server:
        result, payload = ask_json(server, store, "loop forever", "--max-steps", "4")
        assert len(server.requests) == 4
    assert result.exit_code == 1
    assert payload["status"] == "step_limit" and payload["llm_calls"] == 4


@pytest.mark.parametrize("bad_call", [("no_such_function", "{}"), ("archival_memory_search", "{not json"),
                                      ("archival_memory_search", '{"page": "x"}')])
def test_bad_calls_come_back_as_function_errors(kv_store: tuple[Path, str, str, list[str]],
                                                bad_call: tuple[str, str]) -> None:
    store, _, _, _ = kv_store
    name, arguments = bad_call

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        results = last_tool_results(body)
        if not results:
            response = tool_call_response("send_message", {"message": "placeholder"})
            response["choices"][0]["message"]["tool_calls"][0]["function"] = {"name": name, "arguments": arguments}
            return response
        return tool_call_response("send_message", {"message": f"saw: {results[-1][:60]}"})

    with FakeLLMServer(policy) as server:
        result, payload = ask_json(server, store, "anything")
    assert result.exit_code == 0
    assert payload["steps"][0]["result"].startswith("Error:")
    assert payload["answer"].startswith("saw: Error:")


@pytest.mark.parametrize("fault", ["500", "429"])
def test_transient_server_errors_are_retried(kv_store: tuple[Path, str, str, list[str]], fault: str) -> None:
    store, key, expected, _ = kv_store
    with FakeLLMServer(nested_kv_policy, faults=[fault]) as server:
        result, payload = ask_json(server, store, kv_question(key))
    assert payload["status"] == "answered" and payload["answer"] == expected, result.output


def test_memory_pressure_eviction_summary_and_recall(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, _, _ = kv_store
    marker = "zebra-marker-4711"
    state = {"searched": 0}

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        if "tools" not in body:  # the summariser call
            return text_response(f"Summary: the user asked about {marker}; searches were made.")
        results = last_tool_results(body)
        if results and "Showing" in results[-1] and "conversation" in str(body["messages"][-2]):
            return tool_call_response("send_message", {"message": "recalled: " + results[-1][:300]})
        if state["searched"] < 8:
            state["searched"] += 1
            return tool_call_response("archival_memory_search",
                                      {"query": "Key-value pair", "page": state["searched"], "request_heartbeat": True})
        return tool_call_response("conversation_search", {"query": marker, "request_heartbeat": True})

    with FakeLLMServer(policy) as server:
        result, payload = ask_json(server, store, f"Remember {marker}, then read a lot.",
                                   "--context-window", "2500", "--max-steps", "15")
        bodies = server.requests
    texts = [json.dumps(b["messages"]) for b in bodies]
    assert any("Memory pressure" in t for t in texts), "no memory-pressure alert was sent"
    summaries = [b for b in bodies if "tools" not in b]
    assert summaries, "no summary was requested on eviction"
    later = [b for b in bodies if "tools" in b and "Summary: the user asked" in json.dumps(b["messages"][:2])]
    assert later, "the new summary never became the head of the queue"
    assert payload["status"] == "answered", result.output
    assert marker in payload["answer"]  # found again in recall storage after eviction


def test_core_memory_persists_across_chat_runs(tmp_path: Path, kv_store: tuple[Path, str, str, list[str]]) -> None:
    store = kv_store[0]  # chat needs an ingested store: it never creates one

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        if "my name is" in user.lower() and not last_tool_results(body)[-1:]:
            return tool_call_response("core_memory_append",
                                      {"label": "human", "content": "Name: Ada", "request_heartbeat": True})
        system = body["messages"][0]["content"]
        name = "Ada" if "Name: Ada" in system else "unknown"
        return tool_call_response("send_message", {"message": f"Hello {name}"})

    with FakeLLMServer(policy) as server:
        args = ["chat", "--store", str(store), "--model", "fake", "--base-url", server.base_url, "--session", "s1"]
        first = run(args, input="My name is Ada\n/exit\n")
        second = run(args, input="Who am I?\n/exit\n")
        other = run([*args[:-1], "s2"], input="Who am I?\n/exit\n")
    assert "Hello Ada" in first.stdout
    assert "Hello Ada" in second.stdout  # the core memory edit survived the restart
    assert "Hello unknown" in other.stdout  # sessions are separate


def test_api_key_never_appears(kv_store: tuple[Path, str, str, list[str]]) -> None:
    store, key, _, _ = kv_store
    with FakeLLMServer(nested_kv_policy) as server:
        result = run(["ask", kv_question(key), "--store", str(store), "--model", "fake", "--base-url",
                      server.base_url, "--api-key", SECRET, "--trace", "--json", "--session", "secret-check"])
    assert result.exit_code == 0
    assert SECRET not in result.output
    assert SECRET.encode() not in (store / "sessions.sqlite3").read_bytes()


def test_no_llm_prints_search_results(kv_store: tuple[Path, str, str, list[str]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store, key, _, _ = kv_store
    monkeypatch.delenv("DOCQA_MODEL", raising=False)
    result = run(["ask", kv_question(key), "--store", str(store)])
    assert result.exit_code == 0
    assert "no LLM configured" in result.stderr
    assert result.stdout.startswith("Showing 5 of")
    assert f"key = {key}" in result.stdout
    payload = json.loads(run(["ask", key, "--store", str(store), "--no-llm", "--json"]).stdout)
    assert payload["status"] == "no_llm" and f"key = {key}" in payload["citations"][0]["text"]


def test_previous_searches_helper_reads_json_mode() -> None:
    body = {"messages": [{"role": "assistant", "content": '{"function": "archival_memory_search", '
                                                          '"arguments": {"query": "q", "page": 2}}'}]}
    assert previous_searches(body) == [("q", 2)]
