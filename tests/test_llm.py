"""The chat client against a real OpenAI-protocol HTTP server on localhost (testkit/fake_llm.py)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from docqa.agent.llm import ChatClient, LLMError, estimate_messages_tokens, estimate_tokens
from testkit.fake_llm import (
    FakeLLMServer,
    json_mode_response,
    last_tool_results,
    never_send_policy,
    scripted_policy,
    text_response,
    tool_call_response,
)

SECRET = "sk-test-SECRET-0123456789"
SEARCH = {"type": "function", "function": {
    "name": "archival_memory_search", "description": "Search archival memory, one page at a time.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "page": {"type": "integer"}},
                   "required": ["query"]}}}
SEND = {"type": "function", "function": {
    "name": "send_message", "description": "Answer the user.",
    "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}}
TOOLS = [SEARCH, SEND]
QUESTION = [{"role": "system", "content": "You are docqa."}, {"role": "user", "content": "Where is the key?"}]
# A history with one finished call, as the agent keeps it.
HISTORY = [*QUESTION,
           {"role": "assistant", "content": "I should search.", "tool_calls": [
               {"id": "call_1", "type": "function",
                "function": {"name": "archival_memory_search", "arguments": '{"query": "key", "page": 2}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "key = 7 (page 2/3)"}]


@pytest.fixture(autouse=True)
def _no_env_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def client_for(server: FakeLLMServer, **options: Any) -> ChatClient:
    options = {"mode": "tools", "timeout": 5.0, "max_retries": 0, **options}
    return ChatClient("fake-model", base_url=server.base_url, **options)


def llm_error(server: FakeLLMServer, **options: Any) -> str:
    with pytest.raises(LLMError) as caught:
        client_for(server, **options).complete(QUESTION, TOOLS)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# -- tools mode ----------------------------------------------------------------------------------
def test_tools_mode_round_trip() -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        response = tool_call_response("archival_memory_search", {"query": "key", "page": 1}, content="Searching.")
        response["usage"] = {"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333}
        return response

    with FakeLLMServer(policy) as server:
        reply = client_for(server).complete(HISTORY, TOOLS)
        body = server.requests[0]
    assert reply.content == "Searching."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("archival_memory_search", {"query": "key", "page": 1})]
    assert reply.tool_calls[0].id
    assert (reply.prompt_tokens, reply.completion_tokens) == (321, 12)
    assert body["model"] == "fake-model"
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    # Tools mode sends the history as it is, but names each tool message after its call (Hermes/Qwen need it)
    # and gives the call the 9-character id Mistral's templates demand, the same in the call and its result.
    sent_call = body["messages"][2]["tool_calls"][0]
    assert len(sent_call["id"]) == 9 and sent_call["id"].isalnum()
    assert body["messages"][:2] == HISTORY[:2]
    assert body["messages"][2] == {**HISTORY[2], "tool_calls": [{**HISTORY[2]["tool_calls"][0], "id": sent_call["id"]}]}
    assert body["messages"][3] == {**HISTORY[3], "name": "archival_memory_search", "tool_call_id": sent_call["id"]}


def test_plain_text_reply_and_no_tools_means_plain_chat() -> None:
    with FakeLLMServer(lambda body: text_response("A summary.")) as server:
        reply = client_for(server).complete(QUESTION)
        body = server.requests[0]
    assert reply.content == "A summary." and reply.tool_calls == []
    assert "tools" not in body and "tool_choice" not in body


def test_missing_usage_is_estimated_and_grows_with_the_prompt() -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        response = text_response("ok")
        response["usage"] = None
        return response

    long_question = [QUESTION[0], {"role": "user", "content": "word " * 2000}]
    with FakeLLMServer(policy) as server:
        client = client_for(server)
        short, long = client.complete(QUESTION), client.complete(long_question)
    assert short.prompt_tokens == estimate_messages_tokens(QUESTION) > 0
    assert long.prompt_tokens >= short.prompt_tokens + 2000
    assert short.completion_tokens == estimate_tokens("ok") == 1


def test_huge_arguments_are_cut_without_crashing() -> None:
    with FakeLLMServer(lambda body: text_response("unused"), faults=["huge_args"]) as server:
        reply = client_for(server).complete(QUESTION, TOOLS)
    (call,) = reply.tool_calls
    assert call.name == "archival_memory_search"
    huge = len(json.dumps({"query": "x" * 10_000_000}))
    assert len(call.arguments) < 1000 and f"{huge} characters" in call.arguments
    with pytest.raises(ValueError):
        json.loads(call.arguments)  # so the agent refuses the call instead of running it


# -- json mode -----------------------------------------------------------------------------------
def test_json_mode_request_describes_functions_and_rewrites_history() -> None:
    with FakeLLMServer(lambda body: json_mode_response("send_message", {"message": "7"})) as server:
        reply = client_for(server, mode="json").complete(HISTORY, TOOLS)
        body = server.requests[0]
    assert "tools" not in body and "tool_choice" not in body
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are docqa.")
    for text in ("archival_memory_search", "Search archival memory, one page at a time.",
                 json.dumps(SEARCH["function"]["parameters"]), "send_message", '"function"', '"arguments"'):
        assert text in system["content"]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert json.loads(body["messages"][2]["content"]) == {
        "thoughts": "I should search.", "function": "archival_memory_search", "arguments": {"query": "key", "page": 2}}
    assert body["messages"][3]["content"].startswith("FUNCTION RESULT (archival_memory_search):")
    assert last_tool_results(body) == ["key = 7 (page 2/3)"]
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("send_message", {"message": "7"})]
    assert reply.content is None


@pytest.mark.parametrize("content, thoughts", [
    ('{"function": "archival_memory_search", "arguments": {"query": "key", "page": 1}}', None),
    ('```json\n{"function": "archival_memory_search", "arguments": {"query": "key", "page": 1}}\n```', None),
    ('Let me look {first}.\n{"function": "archival_memory_search", "arguments": {"query": "key", "page": 1}} ok',
     "Let me look {first}."),
    ('{"thoughts": "Page 1 next.", "function": "archival_memory_search", "arguments": {"query": "key", "page": 1}}',
     "Page 1 next."),
])
def test_json_mode_parses_the_first_call(content: str, thoughts: str | None) -> None:
    with FakeLLMServer(lambda body: text_response(content)) as server:
        reply = client_for(server, mode="json").complete(QUESTION, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("archival_memory_search", {"query": "key", "page": 1})]
    assert reply.content == thoughts


@pytest.mark.parametrize("content", ["The key is 7.", '{"answer": 7}', '{"function": "send_message", "argu'])
def test_json_mode_without_a_call_returns_the_text(content: str) -> None:
    with FakeLLMServer(lambda body: text_response(content)) as server:
        reply = client_for(server, mode="json").complete(QUESTION, TOOLS)
    assert reply.tool_calls == [] and reply.content == content


def test_json_mode_adds_a_system_message_when_there_is_none() -> None:
    with FakeLLMServer(scripted_policy([])) as server:
        reply = client_for(server, mode="json").complete([QUESTION[1]], TOOLS)
        body = server.requests[0]
    assert body["messages"][0]["role"] == "system" and "send_message" in body["messages"][0]["content"]
    assert reply.tool_calls[0].name == "send_message"  # the fake wrote its native call as JSON text


@pytest.mark.parametrize("mode", ["tools", "json"])
def test_generic_policies_answer_summaries_with_text_and_calls_otherwise(mode: str) -> None:
    with FakeLLMServer(scripted_policy([("archival_memory_search", {"query": "a"})])) as server:
        client = client_for(server, mode=mode)
        summary, first, second = client.complete(QUESTION), client.complete(QUESTION, TOOLS), \
            client.complete(HISTORY, TOOLS)
    assert summary.tool_calls == [] and summary.content
    assert [first.tool_calls[0].name, second.tool_calls[0].name] == ["archival_memory_search", "send_message"]
    with FakeLLMServer(never_send_policy()) as server:
        calls = [client_for(server, mode=mode).complete(HISTORY, TOOLS).tool_calls[0] for _ in range(3)]
    assert {(c.name, json.loads(c.arguments)["request_heartbeat"]) for c in calls} == {
        ("archival_memory_search", True)}


# -- auto mode -----------------------------------------------------------------------------------
def test_auto_mode_switches_to_json_when_tools_are_rejected_and_stays() -> None:
    calls = [("archival_memory_search", {"query": "key"}), ("send_message", {"message": "7"})]
    with FakeLLMServer(scripted_policy(calls), faults=["reject_tools"]) as server:
        client = client_for(server, mode="auto")
        first = client.complete(QUESTION, TOOLS)
        assert client.mode == "json"
        second = client.complete(HISTORY, TOOLS)
        bodies = server.requests
    assert [("tools" in b) for b in bodies] == [True, False, False]  # one rejected try, then json only
    assert [first.tool_calls[0].name, second.tool_calls[0].name] == ["archival_memory_search", "send_message"]
    assert json.loads(first.tool_calls[0].arguments) == {"query": "key"}


def test_auto_mode_keeps_tools_when_the_server_accepts_them() -> None:
    with FakeLLMServer(scripted_policy([])) as server:
        client = client_for(server, mode="auto")
        client.complete(QUESTION)  # no functions offered: nothing learnt yet
        assert client.mode == "auto"
        client.complete(QUESTION, TOOLS)
    assert client.mode == "tools"


def test_auto_mode_does_not_switch_on_other_bad_requests() -> None:
    with FakeLLMServer(scripted_policy([]), faults=["400"]) as server:
        client = client_for(server, mode="auto")
        with pytest.raises(LLMError, match="rejected the request"):
            client.complete(QUESTION, TOOLS)
        assert len(server.requests) == 1 and client.mode == "auto"


def test_tools_mode_with_a_server_that_rejects_tools_says_use_json() -> None:
    with FakeLLMServer(scripted_policy([]), faults=["reject_tools"]) as server:
        message = llm_error(server, mode="tools")
    assert "--llm-mode json" in message and "not supported" in message


# -- retries and failures ------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "429", "close"])
def test_transient_failures_are_retried(fault: str) -> None:
    with FakeLLMServer(scripted_policy([]), faults=[fault]) as server:
        reply = client_for(server, max_retries=2).complete(QUESTION, TOOLS)
        assert len(server.requests) == 2
    assert reply.tool_calls[0].name == "send_message"


@pytest.mark.parametrize("fault, expected", [
    ("500", "failed with HTTP 500 after 1 retries"),
    ("429", "rate limiting requests (429) after 1 retries"),
])
def test_persistent_server_errors_say_so_after_retries(fault: str, expected: str) -> None:
    with FakeLLMServer(scripted_policy([]), faults=[fault] * 2) as server:
        message = llm_error(server, max_retries=1)
        assert len(server.requests) == 2
    assert expected in message and server.base_url in message


def test_hang_becomes_a_timeout_error() -> None:
    with FakeLLMServer(scripted_policy([]), faults=["hang"]) as server:
        message = llm_error(server, timeout=1.0)
    assert "did not answer within 1 s" in message and "--llm-timeout" in message


@pytest.mark.parametrize("fault, expected", [
    ("non_json", "unusable response: not JSON"),
    ("empty_choices", "unusable response: no choices"),
    ("close", "connection to the LLM server"),
])
def test_bad_responses_become_clear_errors(fault: str, expected: str) -> None:
    with FakeLLMServer(scripted_policy([]), faults=[fault]) as server:
        message = llm_error(server)
    assert expected in message


def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient("fake-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(LLMError) as caught:
        client.complete(QUESTION, TOOLS)
    assert f"cannot reach the LLM server at http://127.0.0.1:{port}/v1" in str(caught.value)
    assert "--base-url" in str(caught.value)


def test_unknown_model() -> None:
    with FakeLLMServer(scripted_policy([]), faults=["404"]) as server:
        message = llm_error(server)
    assert "model 'fake-model' not found" in message and "--model" in message


# -- keys ----------------------------------------------------------------------------------------
def test_no_key_and_no_base_url() -> None:
    with pytest.raises(LLMError, match="No API key: set OPENAI_API_KEY or pass --api-key"):
        ChatClient("gpt-4o-mini")


def test_local_server_needs_no_key_and_the_library_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLMServer(scripted_policy([])) as server:
        ChatClient("fake-model", base_url=server.base_url, max_retries=0).complete(QUESTION)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        with pytest.raises(LLMError, match="No API key"):  # OPENAI_* are the command line's to read
            ChatClient("fake-model", max_retries=0)
        ChatClient("fake-model", base_url=server.base_url, api_key="sk-flag", max_retries=0).complete(QUESTION)
    assert server.authorizations == ["Bearer not-needed", "Bearer sk-flag"]


def test_the_command_reads_the_servers_address_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from docqa.cli.agent_io import connect
    from docqa.cli.config import resolve

    with FakeLLMServer(scripted_policy([])) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        client, _ = connect(resolve(model="fake-model"), lambda kind, data: None)
        client.complete(QUESTION)
    assert server.authorizations[-1] == f"Bearer {SECRET}"


@pytest.mark.parametrize("fault", ["401", "500", "404", "400", "hang", "non_json", "close", "empty_choices"])
def test_api_key_never_appears_in_errors(fault: str) -> None:
    with FakeLLMServer(scripted_policy([]), faults=[fault] * 4) as server:
        message = llm_error(server, api_key=SECRET, timeout=1.0)
    assert SECRET not in message
    if fault == "401":
        assert "rejected the API key (401)" in message and "OPENAI_API_KEY" in message


@pytest.mark.parametrize("wording, window, prompt", [
    ("This model's maximum context length is 2048 tokens. However, you requested 3547 tokens (2523 in the "
     "messages, 1024 in the completion). Please reduce the length of the messages or completion.", 2048, 2523),
    ("Requested tokens (2209) exceed context window of 2048", 2048, 2209),
    ("the request exceeds the available context size, try increasing it", None, None),
])
def test_a_prompt_over_the_window_names_the_servers_window_and_count(wording: str, window: int | None,
                                                                     prompt: int | None) -> None:
    from docqa.agent.llm import PromptTooLong
    from testkit.fake_llm import ServerReply

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        raise ServerReply(400, wording)

    with FakeLLMServer(policy) as server, pytest.raises(PromptTooLong) as caught:
        client_for(server, max_retries=0).complete(QUESTION)
    assert (caught.value.server_window, caught.value.requested) == (window, prompt)
    assert "too long for its context window" in str(caught.value)
