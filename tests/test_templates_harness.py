"""The chat-template harness is real: real templates, rendered as vLLM/transformers do, and the fake
server's template mode and metadata (testkit/templates.py, tests/chat_templates/, testkit/fake_llm.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import templates
from testkit.fake_llm import FakeLLMServer, estimate, text_response, tool_call_response
from testkit.templates import TEMPLATES, TemplateError, render

SYSTEM = {"role": "system", "content": "You are docqa, persona SYSTEM-MARKER."}
USER = {"role": "user", "content": "Where is the key? USER-MARKER"}
SEARCH = {"type": "function", "function": {
    "name": "archival_memory_search", "description": "Search archival memory.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "QUERY-DOC"}},
                   "required": ["query"]}}}
CALL_ID = "call1abcd"  # 9 alphanumerics, as Mistral's templates demand


def call(content: str | None = "") -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [{
        "id": CALL_ID, "type": "function",
        "function": {"name": "archival_memory_search", "arguments": json.dumps({"query": "ARGS-MARKER"})}}]}


def tool_result(**extra: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": CALL_ID, "content": "key = 7 RESULT-MARKER", **extra}


REJECT_SYSTEM = {"gemma2"}  # Gemma 2's template raises "System role not supported"
NEEDS_TOOLS = {"command_r_plus", "hermes2pro"}  # they loop over `tools`: None (no tools) is a TypeError


def test_the_committed_templates_are_the_ones_documented() -> None:
    sources = (templates.TEMPLATE_DIR / "SOURCES.md").read_text(encoding="utf-8")
    assert len(TEMPLATES) >= 10
    for name in TEMPLATES:
        assert f"`{name}.jinja`" in sources, f"{name} is not in SOURCES.md"
        assert name in templates.SPECIAL_TOKENS, f"{name} has no special tokens"
    assert {"hermes", "qwen2.5", "llama3.1_json", "llama3.2_json", "mistral", "gemma3_pythonic", "granite",
            "phi4_mini", "deepseekv3", "chatml_function_calling"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_renders_a_plain_question(name: str) -> None:
    messages = [USER] if name in REJECT_SYSTEM else [SYSTEM, USER]
    tools = [SEARCH] if name in NEEDS_TOOLS else None
    prompt = render(name, messages, tools)
    assert "USER-MARKER" in prompt
    if name not in REJECT_SYSTEM:
        assert "SYSTEM-MARKER" in prompt


@pytest.mark.parametrize("name", sorted(NEEDS_TOOLS))
def test_some_templates_fail_without_tools(name: str) -> None:
    with pytest.raises(TemplateError, match="'NoneType' object is not iterable"):
        render(name, [SYSTEM, USER])


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_renders_a_tool_round_trip(name: str) -> None:
    """[.., assistant call, tool result] with name: renders (or fails with the template's own message)."""
    messages = [USER] if name in REJECT_SYSTEM else [SYSTEM, USER]
    try:
        prompt = render(name, [*messages, call(), tool_result(name="archival_memory_search")], [SEARCH],
                        tool_choice="auto")
    except TemplateError as exc:
        # functionary's template concatenates the arguments, which vLLM made a dict; Gemma 2 has no tool turn
        expected = {"functionary3.2": "can only concatenate str", "gemma2": "roles must alternate"}
        assert name in expected, exc
        assert expected[name] in exc.reason
        return
    assert "USER-MARKER" in prompt
    if name not in {"chatml_function_calling", "phi3.5"}:  # these two drop tool results (see below)
        assert "RESULT-MARKER" in prompt


def test_gemma3_demands_alternating_roles() -> None:
    with pytest.raises(TemplateError) as caught:
        render("gemma3_pythonic", [SYSTEM, {"role": "system", "content": "more rules"}, USER])
    assert caught.value.reason == "Conversation roles must alternate user/assistant/user/assistant/..."
    assert "gemma3_pythonic" in str(caught.value)
    # The first system message is folded into the first user turn; Gemma has no system role.
    prompt = render("gemma3_pythonic", [SYSTEM, USER])
    assert prompt.startswith("<bos><start_of_turn>user\nYou are docqa, persona SYSTEM-MARKER.\n\nWhere is")
    with pytest.raises(TemplateError, match="alternate"):  # a user message straight after a tool result
        render("gemma3_pythonic", [SYSTEM, USER, call(), tool_result(), USER])


def test_gemma2_rejects_any_system_message() -> None:
    with pytest.raises(TemplateError, match="System role not supported"):
        render("gemma2", [SYSTEM, USER])


def test_hermes_renders_tool_messages_without_a_name() -> None:
    """Today's Hermes templates (vLLM's and Hermes 2 Pro's own) do not read a tool message's name."""
    for name in ("hermes", "hermes2pro", "qwen2.5"):
        prompt = render(name, [SYSTEM, USER, call(), tool_result()], [SEARCH])
        assert "<tool_response>\nkey = 7 RESULT-MARKER\n</tool_response>" in prompt, name
        assert '"arguments": {"query": "ARGS-MARKER"}' in prompt, name  # the JSON string became a dict


def test_mistral_drops_the_system_text_unless_the_last_message_is_a_user() -> None:
    """Mistral's template has no system turn: it prefixes the system text to the LAST user message only."""
    prompt = render("mistral", [SYSTEM, USER], [SEARCH])
    assert "[INST] You are docqa, persona SYSTEM-MARKER.\n\nWhere is the key?" in prompt
    after_tool = render("mistral", [SYSTEM, USER, call(), tool_result()], [SEARCH])
    assert "RESULT-MARKER" in after_tool and "USER-MARKER" in after_tool
    assert "SYSTEM-MARKER" not in after_tool  # silently dropped
    with pytest.raises(TemplateError, match="length >= 9"):
        render("mistral", [SYSTEM, USER, {**call(), "tool_calls": [{**call()["tool_calls"][0], "id": "c1"}]},
                           {**tool_result(), "tool_call_id": "c1"}])


def test_llama3_json_allows_one_call_per_message() -> None:
    two = call()
    two["tool_calls"] = [two["tool_calls"][0], {**two["tool_calls"][0], "id": "call2abcd"}]
    with pytest.raises(TemplateError, match="only supports single tool-calls"):
        render("llama3.1_json", [SYSTEM, USER, two, tool_result(), {**tool_result(), "tool_call_id": "call2abcd"}],
               [SEARCH])


def test_llama_cpp_python_chatml_function_calling() -> None:
    """Tools show only with a tool_choice; tool results are dropped; the template autoescapes HTML."""
    messages = [SYSTEM, USER, call(), tool_result()]
    assert "QUERY-DOC" not in render("chatml_function_calling", messages, [SEARCH])
    prompt = render("chatml_function_calling", messages, [SEARCH], tool_choice="auto")
    assert "functions.archival_memory_search:" in prompt and "QUERY-DOC" in prompt
    assert "RESULT-MARKER" not in prompt
    assert "{&#34;query&#34;: &#34;ARGS-MARKER&#34;}" in prompt
    with pytest.raises(TemplateError, match="content"):  # StrictUndefined: every message needs content
        render("chatml_function_calling", [{"role": "user"}])


def test_vllm_message_rebuild() -> None:
    source = templates.load("hermes")
    conversation = templates.vllm_conversation(
        [{"role": "assistant", "content": None, "extra": 1, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "not json"}}]},
         {"role": "developer", "content": "rules"}], source)
    assert conversation[0] == {"role": "system", "content": "rules"}  # developer -> system, merged first
    assert conversation[1]["content"] == "" and "extra" not in conversation[1]
    assert conversation[1]["tool_calls"][0]["function"]["arguments"] == {}
    assert templates.content_format(templates.load("gemma3_pythonic")) == "openai"
    assert templates.content_format(source) == "string"


def test_errors_and_undefined_behave_like_transformers() -> None:
    assert render("{{ foo }}|{{ messages[0].nothing }}|{{ bos_token }}", [USER]) == "||"  # not strict
    with pytest.raises(TemplateError, match="boom"):
        render("{{ raise_exception('boom') }}", [USER])
    with pytest.raises(TemplateError):
        render("{% if %}", [USER])
    assert render("{{ tools | tojson }}", [USER], [{"x": "é<"}]) == '[{"x": "é<"}]'
    assert render("{{ {'b': 1, 'a': 2} | tojson(indent=2, sort_keys=True) }}", [USER]) == '{\n  "a": 2,\n  "b": 1\n}'


def test_matches_transformers_own_renderer() -> None:
    """Where transformers is installed, its render_jinja_template gives the same prompt for every template."""
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = [SYSTEM, USER, call(), tool_result(name="archival_memory_search")]
    compared = 0
    for name in TEMPLATES:
        if name in templates.LLAMA_CPP_PYTHON:
            continue
        source = templates.load(name)
        conversation = templates.vllm_conversation(messages if name not in REJECT_SYSTEM else messages[1:], source)
        try:
            ours = render(name, conversation, [SEARCH])
        except TemplateError:
            continue
        theirs = chat_template_utils.render_jinja_template(
            conversations=[conversation], tools=[SEARCH], chat_template=source, add_generation_prompt=True,
            **templates.SPECIAL_TOKENS[name])
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        theirs = theirs[0] if isinstance(theirs, list) else theirs
        if "strftime_now" in source:  # the date may differ across midnight; compare without it
            ours, theirs = ours.split("Current date")[0], theirs.split("Current date")[0]
        assert ours == theirs, name
        compared += 1
    assert compared >= 10


# -- the fake server's template mode and metadata ------------------------------------------------------------
def post(server: FakeLLMServer, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json={"model": "fake", "messages": messages, **extra},
                      timeout=10)


def test_server_answers_400_with_the_template_message() -> None:
    with FakeLLMServer(lambda body: text_response("hi"), template="gemma3_pythonic") as server:
        response = post(server, [SYSTEM, {"role": "system", "content": "more"}, USER])
        assert response.status_code == 400
        assert "alternate" in response.json()["error"]["message"]
        assert server.prompts == []
        ok = post(server, [SYSTEM, USER], tools=[SEARCH])
        assert ok.status_code == 200, ok.text
        assert len(server.prompts) == 1 and "QUERY-DOC" in server.prompts[0]
        assert ok.json()["usage"]["prompt_tokens"] == estimate(server.prompts[0])


def test_server_renders_a_tool_round_trip_before_the_policy() -> None:
    seen: list[int] = []

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(len(body["messages"]))
        return tool_call_response("send_message", {"message": "7"})

    with FakeLLMServer(policy, template="mistral") as server:
        response = post(server, [SYSTEM, USER, call(), tool_result()], tools=[SEARCH])
        assert response.status_code == 200, response.text
        assert "[TOOL_RESULTS]" in server.prompts[0] and seen == [4]
        bad = post(server, [SYSTEM, USER, call(), tool_result(), USER], tools=[SEARCH])
        assert bad.status_code == 400 and "alternate" in bad.json()["error"]["message"]
        assert seen == [4]  # the policy never saw the rejected request


def test_server_without_template_is_unchanged() -> None:
    with FakeLLMServer(lambda body: text_response("hi")) as server:
        response = post(server, [SYSTEM, {"role": "system", "content": "more"}, USER])
        assert response.status_code == 200
        assert server.prompts == []
        models = httpx.get(f"{server.base_url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["fake"] and "max_model_len" not in models["data"][0]
        assert httpx.get(f"{server.base_url.removesuffix('/v1')}/props", timeout=10).status_code == 404


def test_server_metadata() -> None:
    props = {"default_generation_settings": {"n_ctx": 2048}, "n_ctx": 2048}
    with FakeLLMServer(lambda body: text_response("hi"), models=["qwen", "other"],
                       model_info={"max_model_len": 2500}, props=props) as server:
        models = httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("qwen", 2500), ("other", 2500)]
        assert httpx.get(f"{server.base_url.removesuffix('/v1')}/props", timeout=10).json() == props


def test_unknown_template_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown chat template"):
        FakeLLMServer(lambda body: text_response("hi"), template="no-such-template")


def test_templates_dir_holds_only_documented_files() -> None:
    files = {p.name for p in Path(templates.TEMPLATE_DIR).iterdir()}
    assert files == {f"{name}.jinja" for name in TEMPLATES} | {"SOURCES.md"}
