"""Memory that keeps the task: eviction never loses the question or an unseen result, and a chain that
only fits through eviction is still answered (against the real test server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docqa.context import MainContext
from docqa.memory import CoreMemory, SessionStore
from tests.fake_llm import FakeLLMServer, text_response, tool_call_response, wants_function_call
from tests.kv_policy import nested_kv_policy
from tests.test_agent import ask_json, kv_question, kv_store  # noqa: F401 (a fixture)


def test_three_hop_chain_that_only_fits_through_eviction(kv_store: tuple[Path, str, str, list[str]]) -> None:
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
