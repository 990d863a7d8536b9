"""Every conversation the agent can produce, rendered by real chat templates as real servers render them.

The test server runs in template mode: it renders each request through one of the templates in
tests/chat_templates/ (as vLLM and llama-cpp-python do) and answers HTTP 400 on a template error, so a
shape a real server would refuse fails the turn. One chat session walks through every state the agent can
be in: the first request, a multi-search turn with a heartbeat, a call without one (a nudge inside the
result) and a reply without a call (a nudge as a user message), a step-limited turn followed by a new
question, memory pressure and eviction, and later turns. Each rendered prompt must hold the system
instructions, core memory, the current question and the newest function result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from docqa.agent.llm import ChatClient
from docqa.agent.loop import Agent
from docqa.agent.memory import SessionStore
from docqa.archive.store import ArchivalStore
from docqa.cli.config import resolve
from docqa.cli.main import main
from testkit.fake_llm import FakeLLMServer, text_response, tool_call_response, wants_function_call
from testkit.kv_policy import nested_kv_policy
from testkit.templates import TEMPLATES
from tests.test_agent import kv_question, kv_store  # noqa: F401, F811 (a fixture)

# What each template needs (see the README's table of servers and settings). Tools mode is left out
# where the template cannot carry the tool traffic at all: it drops tool results (chatml-function-calling,
# phi3.5), has no tool support (deepseek_r1_qwen, gemma2: no system role, and no turn may follow a call),
# or fails on the arguments vLLM passes as objects (functionary3.2). Those take --llm-mode json.
NO_TOOLS_MODE = {"chatml_function_calling", "phi3.5", "deepseek_r1_qwen", "gemma2", "functionary3.2"}
# Templates with no system role, or one that keeps the system text only before a last user message
# (Mistral's): they take --fold-system, which puts the system text into the first user message.
FOLD_SYSTEM = {"gemma2", "mistral", "mistral_nemo"}
# Tool-use variants of a model's templates, which servers use only for requests with tools: a request
# without tools (the summary) would get the model's default template, which is not among these files.
TOOL_USE_ONLY = {"command_r_plus", "hermes2pro"}

SYSTEM_MARK = "You are docqa, an assistant that answers questions"
CORE_MARK = "I am docqa, a careful research assistant"
QUESTION = re.compile(r"QUESTION-(\d)")
WINDOW = 4096
MAX_STEPS = 8

CASES = ([(t, "tools") for t in TEMPLATES if t not in NO_TOOLS_MODE]
         + [(t, "json") for t in TEMPLATES if t not in TOOL_USE_ONLY])


def question(n: int) -> str:
    return f"QUESTION-{n}: what do the key-value pairs say about the keys"


def _turn_messages(body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """(number of the latest question, the messages after it)."""
    latest, start = 0, 0
    for i, message in enumerate(body["messages"]):
        if message["role"] == "user":
            found = [int(n) for n in QUESTION.findall(message.get("content") or "")]
            if found and max(found) >= latest:
                latest, start = max(found), i
    return latest, body["messages"][start + 1:]


def session_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Plays four turns; reads only the request (its latest question, its own calls since, the summary)."""
    if not wants_function_call(body):  # the summariser keeps the markers of what it was given
        data = body["messages"][-1]["content"]
        return text_response("Summary: " + " ".join(sorted(set(re.findall(r"QUESTION-\d|T3-SEARCH", data)))))
    turn, since = _turn_messages(body)
    steps = sum(1 for m in since if m["role"] == "assistant")
    if turn == 1:  # heartbeat, then a call without one, then a reply without a call, then the answer
        script = [("archival_memory_search", {"query": "key-value pair", "request_heartbeat": True}),
                  ("archival_memory_search", {"query": "key-value pair", "page": 1}), None]
        if steps < len(script):
            call = script[steps]
            return text_response("Thinking it over.") if call is None else tool_call_response(*call)
        return tool_call_response("send_message", {"message": "ANSWER-1 from the pairs"})
    if turn == 2:  # never answers: the step limit ends the turn
        return tool_call_response("archival_memory_search", {"query": "value", "page": steps,
                                                             "request_heartbeat": True})
    if turn == 3 and "T3-SEARCH" not in body["messages"][0]["content"]:  # read on until evicted
        return tool_call_response("archival_memory_search", {"query": "T3-SEARCH key", "page": steps,
                                                             "request_heartbeat": True})
    if turn == 4 and steps == 0:  # a later turn: one more function, then the answer
        return tool_call_response("core_memory_append", {"label": "human", "content": "Asks about pairs.",
                                                         "request_heartbeat": True})
    return tool_call_response("send_message", {"message": f"ANSWER-{turn} from the pairs"})


def _check_prompt(name: str, body: dict[str, Any], prompt: str) -> None:
    """The rendered prompt holds what the model must see: instructions, core memory, question, newest result."""
    assert SYSTEM_MARK in prompt, f"{name}: the system instructions were dropped"
    assert CORE_MARK in prompt, f"{name}: core memory was dropped"
    turn, since = _turn_messages(body)
    assert question(turn).split(":")[0] in prompt, f"{name}: the question was dropped"
    results = [m for m in since if m["role"] == "tool" or (m["role"] == "user" and m["content"].startswith("FUNC"))]
    if results:
        newest = results[-1]["content"].removeprefix("FUNCTION RESULT (")
        line = newest.split("\n")[1 if results[-1]["role"] == "user" else 0]
        first_line = re.split(r"[\"'&<>]", line)[0][:40]  # before any character a template may escape
        assert first_line in prompt, f"{name}: the newest function result was dropped ({first_line!r})"


@pytest.mark.parametrize("template, mode", CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_every_state_of_a_chat_session_renders(tmp_path: Path, kv_store: tuple[Path, str, str, list[str]],  # noqa: F811
                                               template: str, mode: str) -> None:
    store_dir = kv_store[0]
    settings = resolve(store_dir=store_dir).with_(context_window=WINDOW, max_steps=MAX_STEPS)
    store = ArchivalStore(settings)
    with FakeLLMServer(session_policy, template=template) as server:
        client = ChatClient("fake", base_url=server.base_url, mode=mode, fold_system=template in FOLD_SYSTEM)
        events: list[tuple[str, str]] = []
        agent = Agent(settings, store, client, session="shapes", sessions=SessionStore(tmp_path / "s.sqlite3"),
                      on_event=lambda kind, data: events.append((kind, str(data.get("message", "")))))
        statuses = [agent.turn(question(n)).status for n in (1, 2, 3, 4)]
        bodies, prompts = list(server.requests), list(server.prompts)
    errors = [m for kind, m in events if kind == "error"]
    assert statuses == ["answered", "step_limit", "answered", "answered"], (template, mode, errors)
    checked = [b for b in bodies if template not in TOOL_USE_ONLY or wants_function_call(b)]
    assert len(prompts) >= len(checked), f"{template}: the server refused a request: {errors}"
    assert any(not wants_function_call(b) for b in bodies), "nothing was evicted, so eviction went untested"
    assert any(kind == "nudge" and "heartbeat" in m for kind, m in events)
    assert any(kind == "nudge" and "without calling" in m for kind, m in events)
    rendered = iter(prompts)
    for body in bodies:
        if template in TOOL_USE_ONLY and not wants_function_call(body):
            continue  # refused by the tool-use template, as documented above; the summary falls back
        prompt = next(rendered)
        if wants_function_call(body):
            _check_prompt(template, body, prompt)


@pytest.mark.parametrize("template, mode", CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_nested_kv_agent_through_each_template(kv_store: tuple[Path, str, str, list[str]],  # noqa: F811
                                               template: str, mode: str) -> None:
    store, key, expected, _ = kv_store
    fold = ["--fold-system"] if template in FOLD_SYSTEM else []
    with FakeLLMServer(nested_kv_policy, template=template) as server:
        result = CliRunner().invoke(main, ["ask", kv_question(key), "--store", str(store), "--base-url",
                                           server.base_url, "--llm-mode", mode, "--json", *fold],
                                    catch_exceptions=False)
        refused = len(server.requests) - len(server.prompts)
    payload = json.loads(result.stdout)
    assert payload["status"] == "answered" and payload["answer"] == expected, (payload["error"], result.stderr)
    assert refused == 0
