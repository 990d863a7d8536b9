"""`docqa bench`: the paper's evaluations run end to end on real stores, with LLMs played by a local
OpenAI-protocol server whose policies read only what they are sent."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from docqa.archive.store import ArchivalStore
from docqa.bench.cli import bench
from docqa.cli.config import resolve
from testkit.fake_llm import (
    FakeLLMServer,
    json_mode_response,
    last_tool_results,
    text_response,
    tool_call_response,
    wants_function_call,
)
from testkit.kv_policy import previous_searches

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def run_bench(*args: object) -> Result:
    return CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)


def run_json(*args: object) -> dict[str, Any]:
    result = run_bench(*args, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def assert_outputs(out: Path, mode: str) -> None:
    assert json.loads((out / "summary.json").read_text())["mode"] == mode
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Counting:
    """A policy wrapper that counts requests, to prove a resumed run asks the LLM nothing."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.calls = policy, 0

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return self.policy(body)


# -- policies ---------------------------------------------------------------------------------------
def _user_text(body: dict[str, Any], needle: str) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user" and needle in (m["content"] or ""))


def kv_agent_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Search the current key; on a page with `key = K, value = V` follow V; when the current UUID shows
    only as a value, answer it; when it is on no page at all, page on, then answer it."""
    if not wants_function_call(body):
        return text_response("Summary: looking up keys.")  # the memory manager's summary request
    current = re.search(rf"following key: ({UUID})", _user_text(body, "following key:")).group(1)
    page: int | None = 0
    for (query, searched_page), result in zip(previous_searches(body), last_tool_results(body), strict=False):
        if query != current:
            continue
        match = re.search(rf"key = {current}, value = ({UUID})", result)
        if match:
            current, page = match.group(1), 0
        elif f"value = {current}" in result:
            page = None  # shown only as a value: the paper's stopping rule
        else:
            pages = re.search(r"\(page (\d+)/(\d+)\)", result)
            page = searched_page + 1 if pages and int(pages.group(1)) < int(pages.group(2)) else None
    if page is None:
        return tool_call_response("send_message", {"message": current}, content="That value is no key.")
    return tool_call_response("archival_memory_search", {"query": current, "page": page, "request_heartbeat": True},
                              content=f"Looking up {current}.")


def kv_baseline_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Read the JSON pairs in the prompt and follow the chain."""
    prompt = body["messages"][-1]["content"]
    pairs = dict(re.findall(rf'"({UUID})": "({UUID})"', prompt))
    current = re.search(rf'following key: "({UUID})"', prompt).group(1)
    while current in pairs:
        current = pairs[current]
    return text_response(current)


def first_result(text: str) -> str:
    """The passage text of result [1] on a search page."""
    return text.split("):\n", 1)[1].split("\n\n[2]", 1)[0].strip()


def doc_agent_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Search the question once, answer from the best result."""
    if not wants_function_call(body):
        return text_response("Summary: answering a question.")
    results = last_tool_results(body)
    if not results:
        question = _user_text(body, "answer the question:").split("answer the question:", 1)[1].strip().rstrip("?")
        return tool_call_response("archival_memory_search", {"query": question, "request_heartbeat": True})
    best = first_result(results[-1])
    return tool_call_response("send_message", {"message": f"ANSWER: {best}, DOCUMENT: {best}"})


def doc_baseline_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Answer from document 1 of the prompt, or say the documents do not have it."""
    prompt = body["messages"][-1]["content"]
    if "Document [1]: " not in prompt:
        return text_response("INSUFFICIENT INFORMATION")
    first = prompt.split("Document [1]: ", 1)[1].split("Document [2]", 1)[0].split("\n\n\n", 1)[0].strip()
    return text_response(f"ANSWER: {first}, DOCUMENT: {first}")


# -- nested key-value retrieval ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def kv_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: ceiling and agent runs share the per-sample collections."""
    return tmp_path_factory.mktemp("kv") / "store"


def test_nested_kv_ceiling_is_perfect_at_every_level(tmp_path: Path, kv_store: Path) -> None:
    out = tmp_path / "ceiling"
    summary = run_json("nested-kv", "--mode", "ceiling", "--levels", "0,1,2,3,4,5", "--samples", 2,
                       "--out", out, "--store", kv_store)
    assert {level: v["accuracy"] for level, v in summary["levels"].items()} == {str(n): 1.0 for n in range(6)}
    written = rows(out)
    assert len(written) == 12 and all(r["answer"] == r["expected"] for r in written)
    # The stopping rule needs one search per lookup plus one; exhausting the ranking needs more.
    for row in written:
        assert row["searches_stop_rule"] == row["lookups"] + 1
        assert row["searches"] > row["searches_stop_rule"]
    assert_outputs(out, "ceiling")


def test_nested_kv_agent_with_a_competent_policy_is_perfect_and_resumes(tmp_path: Path, kv_store: Path) -> None:
    out = tmp_path / "agent"
    policy = Counting(kv_agent_policy)
    with FakeLLMServer(policy) as server:
        args = ["nested-kv", "--mode", "agent", "--levels", "0,1,2,3", "--samples", 2, "--out", out,
                "--store", kv_store, "--model", "fake", "--base-url", server.base_url, "--api-key", "sk-test"]
        summary = run_json(*args)
        assert [v["accuracy"] for v in summary["levels"].values()] == [1.0, 1.0, 1.0, 1.0]
        written = rows(out)
        assert len(written) == 8
        for row in written:
            assert row["status"] == "answered" and row["correct"]
            assert row["searches"] == row["lookups"] + 1 and row["llm_calls"] >= row["searches"]
            assert row["trace"][0]["arguments"]["query"] == row["query_key"]
        assert_outputs(out, "agent")
        calls = policy.calls
        again = run_bench(*args)
        assert again.exit_code == 0, again.output
        assert policy.calls == calls and len(rows(out)) == 8  # nothing re-run
        assert "100.0%" in again.stdout


def test_nested_kv_agent_runs_in_json_mode_for_servers_without_tools(tmp_path: Path, kv_store: Path) -> None:
    """--llm-mode json reaches the agent: no request offers native tools, calls come back as JSON text."""
    offered_tools = []

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        offered_tools.append("tools" in body)
        reply = kv_agent_policy(body)
        calls = reply["choices"][0]["message"].get("tool_calls")
        if not calls:
            return reply
        call = calls[0]["function"]
        return json_mode_response(call["name"], json.loads(call["arguments"]))

    with FakeLLMServer(policy) as server:
        summary = run_json("nested-kv", "--mode", "agent", "--levels", "1", "--samples", 2, "--out", tmp_path,
                           "--store", kv_store, "--model", "fake", "--base-url", server.base_url, "--api-key", "x",
                           "--llm-mode", "json")
    assert summary["accuracy"] == 1.0
    assert offered_tools and not any(offered_tools)


def test_notes_an_agent_inserts_never_reach_the_next_sample(tmp_path: Path, kv_store: Path) -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        reply = kv_agent_policy(body)
        call = (reply["choices"][0]["message"].get("tool_calls") or [{}])[0].get("function", {})
        inserted = any("Inserted into archival memory" in r for r in last_tool_results(body))
        if call.get("name") == "send_message" and not inserted:
            return tool_call_response("archival_memory_insert", {"content": "Note: key lookups go one by one.",
                                                                 "request_heartbeat": True})
        return reply

    with FakeLLMServer(policy) as server:
        summary = run_json("nested-kv", "--mode", "agent", "--levels", "1", "--samples", 3, "--out", tmp_path,
                           "--store", kv_store, "--model", "fake", "--base-url", server.base_url, "--api-key", "x")
    assert summary["accuracy"] == 1.0
    for row in rows(tmp_path):
        assert "archival_memory_insert" in [step["function"] for step in row["trace"]]
    # Each sample starts from its 140 pairs alone: only the last sample's note is left in the store.
    pair_file = re.search(r"\S+/pair-\d+\.txt", rows(tmp_path)[-1]["trace"][0]["result"]).group(0)
    store = ArchivalStore(resolve(store_dir=kv_store, collection=Path(pair_file).parent.name))
    sources = [doc.source for doc in store.documents()]
    assert len(sources) == 141 and sum(1 for s in sources if s.startswith("memory://")) == 1


def test_nested_kv_baseline_sends_the_pairs_as_json(tmp_path: Path) -> None:
    """With a window the 140 pairs fit in, every pair is sent and the chain can be followed."""
    with FakeLLMServer(kv_baseline_policy) as server:
        summary = run_json("nested-kv", "--mode", "baseline", "--levels", "0,3", "--samples", 2, "--context-window",
                           16384, "--out", tmp_path, "--model", "fake", "--base-url", server.base_url, "--api-key", "x")
    assert summary["accuracy"] == 1.0
    assert all(r["llm_calls"] == 1 and r["pairs_kept"] == 140 and r["gold_survived"] for r in rows(tmp_path))


def test_llm_modes_without_a_model_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCQA_MODEL", raising=False)
    result = run_bench("nested-kv", "--mode", "agent", "--levels", "0", "--samples", 1, "--out", tmp_path)
    assert result.exit_code == 1
    assert "--model" in result.output and "Traceback" not in result.output


# -- document QA ------------------------------------------------------------------------------------
SHARED = {"title": "Weather", "text": "Rain falls when clouds are heavy with water.", "hasanswer": False}
QA = [
    ("what is the capital of freedonia", ["Fredville"], "Freedonia",
     "Freedonia is a small country. The capital of Freedonia is Fredville, a city on the river Fred."),
    ("who invented the glorbulator", ["Ada Quill"], "Glorbulator",
     "The glorbulator was invented by Ada Quill in 1887 in her workshop in Leeds."),
    ("how many legs does a snorkwhale have", ["six", "6"], "Snorkwhale",
     "A snorkwhale has six legs and swims in cold northern seas."),
    ("when did the zentar bridge open", ["1931"], "Zentar Bridge",
     "The Zentar Bridge opened to traffic in 1931 after four years of construction."),
    ("what color is the plumbus flower", ["violet"], "Plumbus flower",
     "The plumbus flower is violet and blooms in early spring."),
]


def write_qa(path: Path, compress: bool = False) -> Path:
    """A lost-in-the-middle QA file: each question has its gold passage, its own distractor and a shared one."""
    lines = []
    for n, (question, answers, title, text) in enumerate(QA):
        ctxs = [SHARED, {"title": title, "text": text, "hasanswer": True, "isgold": True},
                {"title": f"Distractor {n}", "text": f"Distractor {n} talks about bicycles and tea.", "isgold": False}]
        lines.append(json.dumps({"question": question, "answers": answers, "ctxs": ctxs}))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_doc_qa_ceiling_reports_recall_on_all_questions(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "qa.jsonl")
    out = tmp_path / "out"
    summary = run_json("doc-qa", "--mode", "ceiling", "--data", data, "--questions", "all", "--k", "1,2,5",
                       "--out", out)
    assert summary["questions"] == 5
    assert summary["corpus_passages"] == 11  # 5 gold + 5 distractors + 1 shared, stored once
    assert summary["recall_hybrid"]["1"] == 1.0 and summary["recall_hybrid_all_pages"] == 1.0
    assert summary["survival"]["gold_kept"] == {"1": 1.0, "2": 1.0, "5": 1.0}
    assert summary["survival"]["gold_intact"] == {"1": 1.0, "2": 1.0, "5": 1.0}
    assert {r["rank_hybrid"] for r in rows(out)} == {1}
    assert_outputs(out, "ceiling")
    table = run_bench("doc-qa", "--mode", "ceiling", "--data", data, "--questions", "all", "--k", "1,2,5",
                      "--out", out, "--quiet")
    assert "recall hybrid" in table.stdout and "gold kept" in table.stdout and "all pages" in table.stdout


def test_doc_qa_baseline_and_agent_answer_from_the_corpus(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "qa.jsonl.gz", compress=True)
    store = tmp_path / "store"
    with FakeLLMServer(doc_baseline_policy) as server:
        baseline = run_json("doc-qa", "--mode", "baseline", "--data", data, "--questions", 3, "--k", "1,2",
                            "--out", tmp_path / "baseline", "--store", store, "--model", "fake",
                            "--base-url", server.base_url, "--api-key", "x")
    assert {k: v["accuracy"] for k, v in baseline["by_k"].items()} == {"1": 1.0, "2": 1.0}
    assert len(rows(tmp_path / "baseline")) == 6
    with FakeLLMServer(doc_agent_policy) as server:
        agent = run_json("doc-qa", "--mode", "agent", "--data", data, "--questions", 3, "--out", tmp_path / "agent",
                         "--store", store, "--model", "fake", "--base-url", server.base_url, "--api-key", "x")
    assert agent["accuracy"] == 1.0 and agent["mean_searches"] == 1.0 and agent["gold_seen"] == 1.0
    assert_outputs(tmp_path / "agent", "agent")


def test_doc_qa_truncation_starves_the_baseline(tmp_path: Path) -> None:
    """With a window no bigger than the answer reserve, no document survives: the paper's failure mode."""
    data = write_qa(tmp_path / "qa.jsonl")
    with FakeLLMServer(doc_baseline_policy) as server:
        summary = run_json("doc-qa", "--mode", "baseline", "--data", data, "--questions", 2, "--k", "1",
                           "--context-window", 1024, "--out", tmp_path / "out", "--model", "fake",
                           "--base-url", server.base_url, "--api-key", "x")
    assert summary["by_k"]["1"]["accuracy"] == 0.0 and summary["by_k"]["1"]["gold_kept"] == 0.0
    assert summary["by_k"]["1"]["gold_retrieved"] == 1.0  # retrieved, then cut away


def test_doc_qa_judge_decides_what_string_match_cannot(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "qa.jsonl")
    judged_by: list[str] = []

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"]
        if "evaluate whether an LLM correct answered" in prompt:
            judged_by.append(body["model"])
            return text_response("CORRECT" if "QUESTION: what is the capital" in prompt else "INCORRECT")
        return text_response("ANSWER: the one named in the first document")

    with FakeLLMServer(policy) as server:
        summary = run_json("doc-qa", "--mode", "baseline", "--data", data, "--questions", "all", "--k", "1",
                           "--out", tmp_path / "out", "--model", "fake", "--judge-model", "judge",
                           "--base-url", server.base_url, "--api-key", "x")
    assert summary["by_k"]["1"]["accuracy"] == 0.2 and summary["by_k"]["1"]["judged"] == 5
    assert judged_by == ["judge"] * 5
