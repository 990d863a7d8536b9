"""Memory that keeps the task: eviction never loses the question or an unseen result, an oversized result
is cut to fit with a note, and a chain that only fits through eviction is still answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docqa.agent.context import MainContext
from docqa.agent.memory import SessionStore
from testkit.fake_llm import FakeLLMServer, wants_function_call
from testkit.kv_policy import nested_kv_policy
from tests.test_agent import ask_json, kv_question, kv_store  # noqa: F401, F811 (a fixture)

BIG_RESULT = "Showing 5 of 9 results (page 0/1):\n" + "lorem ipsum dolor sit amet " * 340  # about 9 kB


def context(window: int) -> MainContext:
    return MainContext.open("You are docqa. " * 40, "s", SessionStore(None), window)


def test_one_big_result_in_a_small_window_keeps_the_question_and_is_cut_with_a_note() -> None:
    main = context(2000)
    main.fixed_extra_tokens = 400  # function schemas
    main.start_turn("QUESTION: what does the report say?")
    main.note_sent(900)
    main.append({"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "archival_memory_search", "arguments": "{}"}}]})
    main.append({"role": "tool", "tool_call_id": "c1", "name": "archival_memory_search", "content": BIG_RESULT})
    assert main.needs_flush()
    summaries: list[Any] = []
    main.flush(lambda summary, evicted: summaries.append(evicted) or summary)
    roles = [m["role"] for m in main.queue]
    assert roles == ["user", "assistant", "tool"], roles  # nothing the model still needs was evicted
    assert main.queue[0]["content"].startswith("QUESTION")
    result = main.queue[-1]["content"]
    assert result.startswith("Showing 5 of 9 results") and len(result) < len(BIG_RESULT)
    assert "ask for the next page, or search with a narrower query" in result
    assert main.tokens() <= main.budget()
    assert not summaries  # nothing was evicted, so no summary was asked for


def test_eviction_takes_earlier_turns_and_seen_pairs_first() -> None:
    main = context(3000)
    for turn in range(3):
        main.start_turn(f"old question {turn}")
        main.answered(f"old answer {turn} " * 60)
    main.start_turn("CURRENT question")
    for step in range(3):
        main.note_sent()
        main.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{step}", "type": "function", "function": {"name": "archival_memory_search", "arguments": "{}"}}]})
        main.append({"role": "tool", "tool_call_id": f"c{step}", "name": "archival_memory_search",
                     "content": f"RESULT {step} " + "text " * 400})
    evicted: list[dict[str, Any]] = []
    main.flush(lambda summary, messages: evicted.extend(messages) or "summary")
    kept = [m.get("content", "")[:16] for m in main.queue]
    assert kept[0] == "CURRENT question"
    assert any(m["content"].startswith("RESULT 2") for m in main.queue)  # the unseen result stays
    asked = [m["content"] for m in evicted if m["role"] == "user"]
    assert asked[:3] == [f"old question {i}" for i in range(3)]
    assert main.system_text().count("summary") >= 1
    # the queue still alternates: the question, then call/result pairs
    assert [m["role"] for m in main.queue][:2] == ["user", "assistant"]


def test_three_hop_chain_that_only_fits_through_eviction(kv_store: tuple[Path, str, str, list[str]]) -> None:  # noqa: F811
    store, key, expected, chain = kv_store
    with FakeLLMServer(nested_kv_policy) as server:
        result, payload = ask_json(server, store, kv_question(key), "--context-window", "2500")
        bodies = server.requests
    summaries = [b for b in bodies if not wants_function_call(b)]
    assert summaries, "the chain fitted without eviction, so this tests nothing"
    assert payload["status"] == "answered", result.output
    assert payload["answer"] == expected
    for body in bodies:  # every request the agent made still held the question
        if wants_function_call(body):
            assert any(key in (m.get("content") or "") for m in body["messages"] if m["role"] == "user")


def test_a_session_saved_by_the_old_version_is_upgraded_to_the_alternating_shape(tmp_path: Path) -> None:
    sessions = SessionStore(tmp_path / "s.sqlite3")
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "archival_memory_search", "arguments": "{}"}}
             for i in range(2)]
    old_queue = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "two at once", "tool_calls": calls},
                 {"role": "tool", "tool_call_id": "c0", "content": "R0"},
                 {"role": "tool", "tool_call_id": "c1", "content": "R1"},
                 {"role": "user", "content": "[system heartbeat] You have not sent the user an answer yet."}]
    sessions.save("old", {"persona": "p", "human": "h"}, "", old_queue)
    main = MainContext.open("You are docqa.", "old", sessions, 8192)
    main.start_turn("NEW question")
    roles = [m["role"] for m in main.messages()]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"], roles
    assert main.queue[3]["tool_calls"][0]["id"] == "c1" and main.queue[3]["content"] == ""
    assert "[system heartbeat]" in main.queue[4]["content"]  # the old reminder, inside the result it followed
