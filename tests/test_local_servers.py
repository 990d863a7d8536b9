"""docqa against local OpenAI-compatible servers (vLLM, llama.cpp and the like), through the real CLI.

The server's own window and model, a prompt the server refuses as too long, the chat REPL and its saved
sessions, two processes on one session, and credentials in the base URL. Every test talks to the real test
server (testkit/fake_llm.py) on localhost; one small nested-KV store is ingested once for the module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from docqa.agent.memory import SessionStore
from docqa.archive.store import ArchivalStore
from docqa.bench.nested_kv_data import passage
from docqa.cli.config import resolve
from docqa.cli.main import main
from docqa.ingest.pipeline import Ingestor
from testkit.fake_llm import (
    FakeLLMServer,
    ServerReply,
    estimate,
    never_send_policy,
    scripted_policy,
    text_response,
    tool_call_response,
    wants_function_call,
)
from testkit.kv_policy import nested_kv_policy
from tests.helpers import DOCQA
from tests.test_agent import kv_question, kv_sample

VLLM_TOO_LONG = ("This model's maximum context length is 2048 tokens. However, you requested 2209 tokens "
                 "(1185 in the messages, 1024 in the completion). Please reduce the length of the messages or "
                 "completion.")
SERVER_WINDOW = 2048
KEY = "sk-local-KEY-0123456789"
PASSWORD = "s3cretpass"
ENV_VARS = ("DOCQA_MODEL", "DOCQA_CONTEXT_WINDOW", "DOCQA_LLM_MODE", "DOCQA_FOLD_SYSTEM", "DOCQA_MAX_STEPS",
            "OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(autouse=True)
def _no_llm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the flags a test passes say which model and window to use."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A store holding a 3-hop chain's pairs and a dozen others: (store, query key, expected value)."""
    root = tmp_path_factory.mktemp("local-kv")
    pairs, key, expected, chain = kv_sample(3, 0)
    on_chain = set(chain) | {expected}
    chosen = [p for p in pairs if p[0] in on_chain or p[1] in on_chain]
    chosen += [p for p in pairs if p not in chosen][:12]
    docs = root / "pairs"
    docs.mkdir()
    for i, (k, v) in enumerate(chosen):
        (docs / f"pair-{i:03d}.txt").write_text(passage(k, v) + "\n")
    store = root / "store"
    report = Ingestor(ArchivalStore(resolve(store_dir=store)), progress=False, notice=lambda m: None).run([docs])
    assert report.files_ingested == len(chosen) and not report.files_failed
    return store, key, expected


def ingested_store(tmp_path: Path) -> Path:
    """A store holding one small document: chat and list need a store, and never create one."""
    (tmp_path / "note.txt").write_text("The meeting is on Tuesday in room 4.\n")
    store = tmp_path / "store"
    report = Ingestor(ArchivalStore(resolve(store_dir=store)), progress=False, notice=lambda m: None).run(
        [tmp_path / "note.txt"])
    assert report.files_ingested == 1
    return store


def run(*args: object, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def ask(server: FakeLLMServer, store: Path, question: str, *extra: object, base_url: str | None = None) -> Result:
    """`docqa ask` against the server, without --model: the server says what it serves."""
    return run("ask", question, "--store", store, "--base-url", base_url or server.base_url, *extra)


def chat_requests(server: FakeLLMServer) -> list[dict[str, Any]]:
    return list(server.requests)


def server_tokens(body: dict[str, Any]) -> int:
    """The prompt size the test server counts (and reports as usage.prompt_tokens)."""
    return estimate(json.dumps(body.get("messages")) + json.dumps(body.get("tools") or []))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("docqa: error:")]


def echo_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Answer every user message with "echo: <message>"; remember a name the user gives in core memory."""
    if not wants_function_call(body):
        return text_response("Summary: a chat.")
    user = [m["content"] for m in body["messages"] if m["role"] == "user" and m["content"]][-1]
    name = re.search(r"my name is (\w+)", user, re.IGNORECASE)
    called = [m for m in body["messages"] if m["role"] == "tool"]
    if name and not called[-1:]:
        return tool_call_response("core_memory_append", {"label": "human", "content": f"Name: {name.group(1)}",
                                                         "request_heartbeat": True})
    return tool_call_response("send_message", {"message": f"echo: {user.split(chr(10))[0]}"})


# -- 1. the server's window -------------------------------------------------------------------------
@pytest.mark.parametrize("metadata", [{"model_info": {"max_model_len": 2500}},
                                      {"props": {"default_generation_settings": {"n_ctx": 2500}}}],
                         ids=["vllm-max_model_len", "llamacpp-props"])
def test_window_from_the_server_answers_a_three_hop_chain(kv: tuple[Path, str, str],
                                                          metadata: dict[str, Any]) -> None:
    store, key, expected = kv
    with FakeLLMServer(nested_kv_policy, **metadata) as server:
        result = ask(server, store, kv_question(key), "--trace", "--json")
        bodies = chat_requests(server)
    payload = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert payload["status"] == "answered" and payload["answer"] == expected
    assert "context window: 2,500 tokens, from the server" in result.stderr
    # At the default 8,192 tokens this chain fits whole; only the server's 2,500 makes docqa evict.
    assert [b for b in bodies if not wants_function_call(b)], "no eviction: the server's window was not used"
    assert "evicted" in result.stderr
    # 3. every request the server received is counted, the summary request included
    assert payload["llm_calls"] == len(bodies)


# -- 2. a prompt the server refuses as too long --------------------------------------------------------
def refusing(policy: Any, limit: int = SERVER_WINDOW) -> tuple[Any, list[int]]:
    """The policy behind a vLLM that refuses, with its 400 wording, every prompt over `limit` tokens."""
    refused: list[int] = []

    def guarded(body: dict[str, Any]) -> dict[str, Any]:
        if server_tokens(body) > limit:
            refused.append(server_tokens(body))
            raise ServerReply(400, VLLM_TOO_LONG)
        return policy(body)

    return guarded, refused


def test_a_refused_prompt_shrinks_the_window_evicts_and_goes_on(kv: tuple[Path, str, str]) -> None:
    store, _, _ = kv
    searches = [("archival_memory_search", {"query": "Key-value pair", "page": p, "request_heartbeat": True})
                for p in range(3)]
    policy, refused = refusing(scripted_policy(searches))
    with FakeLLMServer(policy) as server:
        result = ask(server, store, "List some pairs.", "--context-window", 8192, "--trace", "--json")
        bodies = chat_requests(server)
    payload = json.loads(result.stdout)
    assert payload["status"] == "answered", payload["error"]
    assert result.exit_code == 0
    assert len(refused) == 1, f"refused {len(refused)} prompts; docqa should shrink once and then fit"
    assert "the server's window is 2,048 tokens, smaller than the 8,192 assumed" in result.stderr
    after = bodies[bodies.index(next(b for b in bodies if server_tokens(b) > SERVER_WINDOW)) + 1:]
    assert any(not wants_function_call(b) for b in after), "no eviction (summary request) after the refusal"
    assert [s["function"] for s in payload["steps"]] == ["archival_memory_search"] * 3 + ["send_message"]
    # 3. llm_calls counts what the server received: the refused request and the summary request too
    assert payload["llm_calls"] == len(bodies)


def test_a_server_that_keeps_refusing_gets_one_line_naming_both_windows(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    policy, refused = refusing(nested_kv_policy, limit=0)
    with FakeLLMServer(policy) as server:
        result = ask(server, store, kv_question(key), "--context-window", 8192)
        bodies = chat_requests(server)
    assert result.exit_code == 1
    # docqa shrinks once and asks again, or stops at once when even the fixed prompt cannot fit what is left
    assert len(bodies) == len(refused) in (1, 2), "docqa should retry at most once after shrinking, then stop"
    [line] = error_lines(result.stderr)
    assert "8,192" in line, f"docqa's own window (--context-window 8192) is not named: {line}"
    assert "2,048" in line  # the server's
    assert "--context-window" in line
    assert result.stdout == ""


def test_a_window_too_small_for_the_fixed_prompt_fails_before_any_request(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    with FakeLLMServer(nested_kv_policy) as server:
        result = ask(server, store, kv_question(key), "--context-window", 600)
        assert server.requests == [], "a chat request was sent although the prompt cannot fit"
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "fixed part of the prompt" in line and "do not fit" in line and "600" in line
    assert "--context-window" in line


# -- 3. llm_calls ------------------------------------------------------------------------------------
def test_llm_calls_counts_a_failed_request(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    with FakeLLMServer(nested_kv_policy, faults=["400"]) as server:
        result = ask(server, store, kv_question(key), "--json")
        bodies = chat_requests(server)
    payload = json.loads(result.stdout)
    assert result.exit_code == 1 and payload["status"] == "error"
    assert payload["llm_calls"] == len(bodies) == 1


# -- 4. the model from the server -----------------------------------------------------------------------
def test_the_only_listed_model_is_used(kv: tuple[Path, str, str]) -> None:
    store, key, expected = kv
    with FakeLLMServer(nested_kv_policy, models=["qwen2.5-7b-instruct"]) as server:
        result = ask(server, store, kv_question(key))
        models = {b["model"] for b in server.requests}
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(expected)
    assert models == {"qwen2.5-7b-instruct"}


@pytest.mark.parametrize(("models", "expected"), [(["a", "b"], ["a, b", "--model"]), ([], ["pass --model"])],
                         ids=["several", "none"])
def test_no_model_chosen_when_the_server_lists_several_or_none(kv: tuple[Path, str, str], models: list[str],
                                                               expected: list[str]) -> None:
    store, key, _ = kv
    with FakeLLMServer(nested_kv_policy, models=models) as server:
        result = ask(server, store, kv_question(key))
        assert server.requests == []
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    for text in expected:
        assert text in line


# -- 5. what --trace shows ---------------------------------------------------------------------------
def test_trace_shows_empty_replies_nudges_and_memory_alerts(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    replies = iter([text_response(""), tool_call_response("archival_memory_search", {"query": key})])

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        return next(replies, None) or tool_call_response("send_message", {"message": "found it"})

    with FakeLLMServer(policy) as server:
        result = ask(server, store, "What is there?", "--context-window", 2500, "--trace")
    assert result.exit_code == 0, result.stderr
    trace = result.stderr
    assert "empty reply" in trace
    assert "[system] You replied without calling" in trace  # after the empty reply
    assert "[system heartbeat]" in trace  # after the search without request_heartbeat
    assert "Memory pressure" in trace  # the prompt starts above 70% of 2,500 tokens
    assert result.stdout.startswith("found it")


# -- 6. docqa chat ---------------------------------------------------------------------------------------
def chat(server: FakeLLMServer, store: Path, session: str, lines: list[str], *extra: object) -> Result:
    return run("chat", "--store", store, "--base-url", server.base_url, "--session", session, *extra,
               input="".join(f"{line}\n" for line in lines))


def test_chat_help_memory_and_resumed_banner(tmp_path: Path) -> None:
    store = ingested_store(tmp_path)
    with FakeLLMServer(echo_policy) as server:
        first = chat(server, store, "s", ["/help", "My name is Ada", "/memory", "hello there"])
        saved = SessionStore(store / "sessions.sqlite3").load("s")
        second = chat(server, store, "s", ["again"])
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    for command in ("/help", "/memory", "/exit"):
        assert re.search(rf"^\s+{command}\b", first.stdout, re.MULTILINE), f"/help does not list {command}"
    assert re.search(r"<human[^>]*>\nNothing is known about the user yet.\nName: Ada\n</human>", first.stdout)
    assert "new session" in first.stderr
    # Two turns: the question and the answer of each, and the core memory call with its result.
    assert saved is not None and len(saved[2]) == 6
    assert "resumed: 6 messages" in second.stderr
    for output in (first.stdout, second.stdout):
        assert "you>" not in output  # piped input: no prompt
    answers = [line for line in first.stdout.splitlines() if "docqa>" in line]
    assert answers == ["docqa> echo: My name is Ada", "docqa> echo: hello there"]


@pytest.mark.parametrize("failure", ["server-error", "step-limit"])
def test_chat_exits_1_when_a_turn_fails(tmp_path: Path, failure: str) -> None:
    store = ingested_store(tmp_path)
    if failure == "server-error":  # the first request and its three retries fail; the second turn works
        server, extra = FakeLLMServer(echo_policy, faults=["500"] * 4), ()
    else:
        server, extra = FakeLLMServer(never_send_policy()), ("--max-steps", 2)
    with server:
        failed = chat(server, store, "f", ["first", "second"], *extra)
        fine = chat(server, store, "ok", ["third"])
    assert failed.exit_code == 1
    if failure == "server-error":
        assert "HTTP 500" in error_lines(failed.stderr)[0]
        assert failed.stdout == "docqa> echo: second\n"  # the failed turn did not end the chat
    else:
        assert "no answer within 2 steps" in failed.stderr
    assert fine.exit_code == (0 if failure == "server-error" else 1)


# -- 7. docqa sessions -------------------------------------------------------------------------------------
def test_sessions_list_delete_and_json(tmp_path: Path) -> None:
    store = ingested_store(tmp_path)
    with FakeLLMServer(echo_policy) as server:
        chat(server, store, "alpha", ["one"])
        chat(server, store, "beta", ["two", "three"])
        listed = run("sessions", "--store", store)
        as_json = json.loads(run("sessions", "--store", store, "--json").stdout)
        deleted = run("sessions", "--store", store, "--delete", "alpha")
        again = run("sessions", "--store", store, "--delete", "alpha")
        missing_json = run("sessions", "--store", store, "--delete", "nope", "--json")
        after = run("sessions", "--store", store)
        reopened = chat(server, store, "alpha", ["/exit"])
    assert listed.exit_code == 0
    assert re.search(r"^alpha .*2 messages in context", listed.stdout, re.MULTILINE)
    assert re.search(r"^beta .*4 messages in context", listed.stdout, re.MULTILINE)
    assert listed.stdout.rstrip().endswith("2 session(s)")
    assert {s["name"]: s["messages_in_context"] for s in as_json} == {"alpha": 2, "beta": 4}
    assert deleted.exit_code == 0 and "deleted session: alpha" in deleted.stdout
    assert again.exit_code == 1 and "no session named 'alpha'" in again.stderr
    assert missing_json.exit_code == 1
    assert json.loads(missing_json.stdout) == {"deleted": [], "not_found": ["nope"]}
    assert "alpha" not in after.stdout and "beta" in after.stdout and "1 session(s)" in after.stdout
    assert "new session" in reopened.stderr  # deleted means forgotten


def test_sessions_on_a_store_without_sessions(tmp_path: Path) -> None:
    store = ingested_store(tmp_path)
    assert run("list", "--store", store).exit_code == 0  # an existing store, never chatted with
    listed = run("sessions", "--store", store)
    as_json = run("sessions", "--store", store, "--json")
    assert listed.exit_code == 0 and listed.stdout.strip() == "0 session(s)"
    assert json.loads(as_json.stdout) == []
    assert not (store / "sessions.sqlite3").exists()


# -- 8. two processes on one session -----------------------------------------------------------------------
def test_two_chat_processes_on_one_session_lose_no_turns(tmp_path: Path) -> None:
    store = ingested_store(tmp_path)

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.5)  # long enough that the other process's turn starts meanwhile
        return echo_policy(body)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCQA_", "OPENAI_"))}
    with FakeLLMServer(slow) as server:
        args = [str(DOCQA), "chat", "--store", str(store), "--base-url", server.base_url, "--session", "same"]
        procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(2)]
        try:
            for proc in procs:  # both are at their first input() before either gets a message
                assert "docqa chat, session 'same'" in proc.stderr.readline()
            for n, proc in enumerate(procs):
                proc.stdin.write(f"process-{n}-first\nprocess-{n}-second\n")
                proc.stdin.close()
            outputs = [(proc.stdout.read(), proc.stderr.read(), proc.wait(timeout=120)) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    for n, (stdout, stderr, code) in enumerate(outputs):
        assert code == 0, stderr
        # Piped: no prompt, and every answer on a line of its own.
        assert stdout.splitlines() == [f"docqa> echo: process-{n}-first", f"docqa> echo: process-{n}-second"]
    saved = SessionStore(store / "sessions.sqlite3").load("same")
    assert saved is not None
    users = [m["content"] for m in saved[2] if m["role"] == "user"]
    assert sorted(users) == sorted(f"process-{n}-{w}" for n in range(2) for w in ("first", "second"))
    # One process waited for the other's turn to end (and said so): the turns did overlap.
    assert any("in use by another docqa process" in stderr for _, stderr, _ in outputs)


# -- 9. credentials ----------------------------------------------------------------------------------------
def test_url_credentials_go_as_basic_auth_and_never_show(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    token = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    with FakeLLMServer(nested_kv_policy, faults=["echo_auth"]) as server:
        url = server.base_url.replace("http://", f"http://user:{PASSWORD}@")
        result = ask(server, store, kv_question(key), "--api-key", KEY, "--trace", "--json", "--session", "secrets",
                     base_url=url)
        sent = [*server.get_authorizations, *server.authorizations]
    assert server.authorizations == [f"Basic {token}"]
    assert not [a for a in sent if KEY in a], "the API key was sent although the URL holds credentials"
    assert re.search(r"^docqa: note: .*does not send the API key", result.stderr, re.MULTILINE)
    payload = json.loads(result.stdout)
    assert result.exit_code == 1 and "not authorised" in payload["error"]  # the server's echo came back
    saved = (store / "sessions.sqlite3").read_bytes()
    for secret in (PASSWORD, token, KEY, f"user:{PASSWORD}"):
        assert secret not in result.stdout and secret not in result.stderr
        assert secret.encode() not in saved


def test_an_echoed_api_key_never_shows(kv: tuple[Path, str, str]) -> None:
    store, key, _ = kv
    with FakeLLMServer(nested_kv_policy, faults=["echo_auth"]) as server:
        result = ask(server, store, kv_question(key), "--api-key", KEY, "--trace", "--json", "--session", "key")
        assert server.authorizations == [f"Bearer {KEY}"]
    payload = json.loads(result.stdout)
    assert result.exit_code == 1 and "not authorised" in payload["error"]
    assert KEY not in result.stdout and KEY not in result.stderr
    assert KEY.encode() not in (store / "sessions.sqlite3").read_bytes()
