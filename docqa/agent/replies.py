"""What an LLM sends back, read: function calls (native or written as JSON), replies, errors and token
estimates; and what a server's error text says (tools refused, the prompt too long, its window)."""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from docqa.agent.shaping import message_text
from docqa.errors import DocqaError

MAX_ARGUMENT_CHARS = 1_000_000  # bigger tool-call arguments are cut (see tool_call)
KEPT_ARGUMENT_CHARS = 200
MAX_JSON_ATTEMPTS = 64  # json mode: how many "{" to try parsing a call from, so a long reply stays cheap


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for."""

    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it; may be invalid JSON, the caller checks it


@dataclass(frozen=True)
class Reply:
    """What the model answered: inner thoughts, function calls, and what the call cost in tokens."""

    content: str | None
    tool_calls: list[ToolCall]
    prompt_tokens: int  # from the server's usage; estimated when the server sends none
    completion_tokens: int


class LLMError(DocqaError):
    """A user-facing error: str(e) is one clear line that says what to do. Never contains the API key."""


class PromptTooLong(LLMError):
    """The server refused the prompt as longer than its window; `server_window` is its size and `requested`
    its count of the prompt's tokens, where it said."""

    def __init__(self, message: str, server_window: int | None = None, requested: int | None = None) -> None:
        super().__init__(message)
        self.server_window = server_window
        self.requested = requested


def estimate_tokens(text: str) -> int:
    """Estimated token count of `text`: ceil(len / 4).

    About four characters per token holds for English with GPT-style BPE tokenizers; it needs no tokenizer
    download and works for any model, which matters more here than precision.
    """
    return math.ceil(len(text) / 4)


def estimate_messages_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """Estimated prompt tokens of a chat request: every message's text and tool calls, plus the tool schemas."""
    total = 0
    for message in messages:
        text = message_text(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            text += str(function.get("name") or "") + str(function.get("arguments") or "")
        total += estimate_tokens(text) + 4  # the role and separators cost a few tokens per message
    if tools:
        total += estimate_tokens(json.dumps(tools))
    return total


# -- json mode replies ----------------------------------------------------------------------------
def parse_json_call(text: str) -> tuple[ToolCall | None, str | None]:
    """The first JSON function call in a reply, tolerating code fences and text around it; (call, thoughts)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(MAX_JSON_ATTEMPTS):
        if start < 0:
            break
        try:
            obj, _end = decoder.raw_decode(text, start)
        except ValueError:
            obj = None
        found = call_from_object(obj) if isinstance(obj, dict) else None
        if found is not None:
            name, arguments = found
            thoughts = obj.get("thoughts") or obj.get("thought")  # type: ignore[union-attr]
            if not isinstance(thoughts, str) or not thoughts.strip():
                thoughts = text[:start].replace("```json", "").replace("```", "").strip()
            return tool_call(new_call_id(), name, arguments), thoughts or None
        start = text.find("{", start + 1)
    return None, text


def call_from_object(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(name, arguments) from {"function": NAME, "arguments": {...}} or the OpenAI-like variants models write."""
    function = obj.get("function")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(function, dict):  # {"function": {"name": ..., "arguments": ...}}
        function, arguments = function.get("name"), function.get("arguments", arguments)
    if not isinstance(function, str):
        function = obj.get("name")
    if not isinstance(function, str) or not function:
        return None
    return function, arguments if isinstance(arguments, str) else json.dumps(arguments)


# -- small helpers ------------------------------------------------------------------------------
def native_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send an object instead of JSON text
            arguments = "" if arguments is None else json.dumps(arguments)
        calls.append(tool_call(str(call.get("id") or new_call_id()), str(function.get("name") or ""), arguments))
    return calls


def tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A ToolCall; arguments past MAX_ARGUMENT_CHARS are cut to a short prefix plus a note.

    The cut text is never valid JSON, so the agent refuses the call and tells the model, and megabytes of
    runaway output never enter the context or the session store.
    """
    if len(arguments) > MAX_ARGUMENT_CHARS:
        arguments = (f"{arguments[:KEPT_ARGUMENT_CHARS]} ... [docqa cut these arguments: {len(arguments)} "
                     f"characters is over the limit of {MAX_ARGUMENT_CHARS}]")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def rejects_tools(message: str) -> bool:
    """Whether a 400 says the server or model cannot do tool calling (not just a bad tool message).

    Real wordings: Ollama "... does not support tools", vLLM '"auto" tool choice requires
    --enable-auto-tool-choice', llama.cpp "tools param requires --jinja flag", pydantic-based servers
    "tools: extra inputs are not permitted". OpenAI's "messages with role 'tool' must be a response to ..."
    is about our history, and switching modes would hide that bug, so it does not count.
    """
    text = message.lower()
    if not any(word in text for word in ("tool", "function")):
        return False
    return any(word in text for word in ("support", "requires", "enable", "jinja", "unknown", "unrecognized",
                                         "unexpected", "not allowed", "not permitted", "extra"))


# How servers word a prompt that is over the window, and where they say the window's size:
# vLLM and OpenAI "This model's maximum context length is 2048 tokens. However, you requested ...";
# llama-cpp-python "Requested tokens (2209) exceed context window of 2048"; llama.cpp's server
# "the request exceeds the available context size" with n_ctx in the error object; LM Studio "... the
# model is loaded with context length of only 2048 tokens"; TGI "`inputs` tokens + `max_new_tokens` must
# be <= 4096".
TOO_LONG = re.compile(r"context length|context window|context size|context_length_exceeded|maximum context|"
                       r"too many tokens|prompt is too long|must be <= \d+", re.IGNORECASE)
WINDOW_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"maximum context length is (\d+)", r"context window of (\d+)", r"context length of only (\d+)",
    r'"n_ctx"\s*:\s*(\d+)', r"must be <= (\d+)")]


def too_long(detail: str, body: object) -> bool:
    return bool(TOO_LONG.search(detail) or TOO_LONG.search(json.dumps(body, default=str)))


# Where they say how many tokens the refused prompt had (vLLM/OpenAI, llama-cpp-python, llama.cpp, TGI).
REQUESTED = [re.compile(p, re.IGNORECASE) for p in (
    r"(\d+) in the messages",  # vLLM's count of the prompt alone; its "you requested N" adds max_tokens
    r"you requested (\d+) tokens", r"your messages resulted in (\d+) tokens", r"requested tokens \((\d+)\)",
    r'"n_prompt_tokens"\s*:\s*(\d+)', r"given: (\d+) `inputs` tokens", r"request has (\d+) input tokens")]


def server_window(detail: str, body: object) -> int | None:
    return first_number(WINDOW_PATTERNS, detail, body)


def first_number(patterns: list[re.Pattern[str]], detail: str, body: object) -> int | None:
    text = f"{detail} {json.dumps(body, default=str)}"
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None
