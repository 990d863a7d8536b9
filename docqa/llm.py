"""The OpenAI-compatible chat client: native tool calls or a JSON fallback, retries, usage accounting.

`ChatClient.complete` sends the agent's messages to any server that speaks the chat-completions protocol
(OpenAI, vLLM, Ollama, llama.cpp, LM Studio) and returns a `Reply`. Two ways to call functions:

- tools mode: the server's native tool calling (`tools=`, `tool_choice="auto"`);
- json mode, for servers or models without it: the functions are described in the system message, the
  model answers with one JSON object `{"function": ..., "arguments": {...}}`, and the history is rewritten
  so the server never sees tool messages.

auto mode starts with tools and switches to json for good when the server says it does not support tools.
Transient failures are retried by the `openai` client itself; whatever still fails becomes an `LLMError`
whose text is one line that says what to do.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import openai

from docqa.shaping import for_templates, message_text, to_json_mode

MODES = ("auto", "tools", "json")
PLACEHOLDER_KEY = "not-needed"  # local servers ignore the key, but the openai client insists on one
MAX_ARGUMENT_CHARS = 1_000_000  # bigger tool-call arguments are cut (see _tool_call)
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


class LLMError(Exception):
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


class ChatClient:
    """A chat model behind an OpenAI-compatible API; `complete` is the only call the agent needs.

    `mode` is "auto", "tools" or "json"; "auto" becomes "tools" or "json" after the first call that offers
    functions. `timeout` and `max_retries` configure the client built here; an injected `client` keeps its own.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 mode: str = "auto", timeout: float = 60.0, max_retries: int = 3,
                 client: openai.OpenAI | None = None, fold_system: bool = False) -> None:
        if not model:
            raise LLMError("no model given: pass --model or set DOCQA_MODEL")
        if mode not in MODES:
            raise LLMError(f"unknown LLM mode '{mode}': use auto, tools or json (--llm-mode or DOCQA_LLM_MODE)")
        if not timeout > 0:
            raise LLMError(f"the LLM timeout must be more than 0 seconds, not {timeout}: fix --llm-timeout")
        if max_retries < 0:
            raise LLMError(f"max_retries must be 0 or more, not {max_retries}")
        self.model = model
        self.mode = mode
        self.fold_system = fold_system  # system text into the first user message, for templates without one
        self.notices: list[str] = []  # things the user should know about how requests are sent
        self._max_tokens: int | None = None
        self.attempts = 0  # HTTP requests the last `complete` sent (the openai client retries some failures)
        self.on_retry: Callable[[str], None] | None = None  # told when a request is sent again
        credentials: list[str] = []
        if client is None:
            base_url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL") or None
            api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
            if not api_key:
                if not base_url:
                    raise LLMError("No API key: set OPENAI_API_KEY or pass --api-key "
                                   "(for a local server pass --base-url)")
                api_key = PLACEHOLDER_KEY
            headers: dict[str, str] = {}
            if base_url and _url_credentials(base_url):
                base_url, headers, credentials = _basic_auth(base_url)
                if api_key != PLACEHOLDER_KEY:
                    self.notices.append("the base URL holds a user name and password, so docqa sends them as HTTP "
                                        "Basic auth and does not send the API key; take them out of the URL to "
                                        "send the key instead")
            try:
                http = openai.DefaultHttpxClient(event_hooks={"request": [self._counted]})
                client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                                       default_headers=headers or None, http_client=http)
            except openai.OpenAIError as exc:
                raise LLMError(f"cannot set up the LLM client ({_one_line(str(exc))}): check --base-url") from None
        self._client = client
        client_key = getattr(client, "api_key", None)
        self._secrets = [s for s in (api_key, client_key, *credentials)
                         if isinstance(s, str) and len(s) >= 3 and s != PLACEHOLDER_KEY]
        self.base_url = _display_url(str(client.base_url))
        self.timeout = _seconds(getattr(client, "timeout", None), timeout)  # an injected client's own, for messages
        self.max_retries = int(getattr(client, "max_retries", max_retries))

    # -- the one public call -------------------------------------------------------------------
    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None) -> Reply:
        """Ask the model for its next message; `tools` are OpenAI tool schemas (None: plain chat).

        `max_tokens` caps the reply on self-hosted servers, which otherwise generate until their window is
        full (llama.cpp's does); OpenAI's own API is left to its defaults, as its newer models refuse the field.
        """
        tools = tools or None
        self.attempts = 0
        self._max_tokens = max_tokens if max_tokens and "api.openai.com" not in self.base_url else None
        messages = for_templates(messages, fold_system=self.fold_system)
        if self.mode == "json":
            return self._complete_json(messages, tools)
        try:
            reply = self._complete_tools(messages, tools)
        except _ToolsRejected as rejected:
            if self.mode == "tools":
                raise self._error(f"the LLM server at {self.base_url} does not accept native tool calls "
                                  f"({rejected}): pass --llm-mode json (or auto)") from None
            self.mode = "json"  # for the rest of this client's life: the server will not change its mind
            return self._complete_json(messages, tools)
        if tools and self.mode == "auto":
            self.mode = "tools"
        return reply

    def _counted(self, request: Any) -> None:
        """httpx's hook for every request sent: count it, and say so when it is a retry."""
        self.attempts += 1
        if self.attempts > 1 and self.on_retry is not None:
            self.on_retry(f"sending the request again (attempt {self.attempts}): the server refused the last one, "
                          f"failed, or gave no answer within {self.timeout:g} s")

    # -- the two modes ---------------------------------------------------------------------------
    def _complete_tools(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
        payload: dict[str, Any] = {"messages": messages}
        if tools:
            payload.update(tools=tools, tool_choice="auto")
        message, usage = self._send(payload)
        content = message_text(message.get("content")) or None
        calls = _native_calls(message)
        return self._reply(content, calls, usage, messages, tools)

    def _complete_json(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
        sent = for_templates(to_json_mode(messages, tools), fold_system=self.fold_system)
        message, usage = self._send({"messages": sent})
        content = message_text(message.get("content")) or None
        # A server may still return native calls (some parse them out of the text themselves): take them.
        calls = _native_calls(message)
        if tools and not calls and content:
            call, thoughts = parse_json_call(content)
            if call is not None:
                calls, content = [call], thoughts
        return self._reply(content, calls, usage, sent, None)

    def _reply(self, content: str | None, calls: list[ToolCall], usage: dict[str, Any],
               sent: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int) or isinstance(prompt, bool) or prompt < 0:
            prompt = estimate_messages_tokens(sent, tools)
        if not isinstance(completion, int) or isinstance(completion, bool) or completion < 0:
            completion = estimate_tokens((content or "") + "".join(c.name + c.arguments for c in calls))
        return Reply(content=content, tool_calls=calls, prompt_tokens=prompt, completion_tokens=completion)

    # -- the wire ------------------------------------------------------------------------------
    def _send(self, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST one request (the openai client retries transient failures); (message, usage) of the answer."""
        try:
            if self._max_tokens:
                payload = {**payload, "max_tokens": self._max_tokens}
            raw = self._client.chat.completions.with_raw_response.create(model=self.model, **payload)
            text = raw.http_response.text
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if "tools" in payload and _rejects_tools(_server_message(exc)):
                raise _ToolsRejected(_server_message(exc)) from None
            raise self._mapped(exc) from None
        except openai.OpenAIError as exc:
            raise self._mapped(exc) from None
        try:
            body = json.loads(text)
        except ValueError:
            raise self._unusable(f"not JSON: {text[:80]!r}") from None
        if not isinstance(body, dict):
            raise self._unusable(f"expected a JSON object, got {type(body).__name__}")
        if body.get("error"):
            error = body["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise self._error(f"the LLM server at {self.base_url} answered with an error ({detail}): "
                              "check the server's log, --model and --base-url")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self._unusable("no choices in the answer")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            raise self._unusable("the first choice has no message")
        usage = body.get("usage")
        return message, usage if isinstance(usage, dict) else {}

    def _mapped(self, exc: openai.OpenAIError) -> LLMError:
        """The openai client's final exception, as one line that says what to do."""
        url = self.base_url
        retries = f" after {self.max_retries} retries" if self.max_retries else ""
        if isinstance(exc, openai.APITimeoutError):
            return self._error(f"the LLM server at {url} did not answer within {self.timeout:g} s{retries}: "
                               "check that it is not overloaded, or raise --llm-timeout")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if type(cause).__name__ == "ConnectError":
                return self._error(f"cannot reach the LLM server at {url}: {cause} — is it running? check --base-url")
            return self._error(f"the connection to the LLM server at {url} broke ({cause or exc}){retries}: "
                               "check that the server is healthy, then try again")
        if isinstance(exc, openai.APIStatusError):
            status, detail = exc.status_code, _server_message(exc)
            if status == 401:
                return self._error(f"the LLM server at {url} rejected the API key (401): "
                                   "check OPENAI_API_KEY / --api-key")
            if status == 403:
                return self._error(f"the LLM server at {url} refused access (403: {detail}): "
                                   f"check that your key may use model '{self.model}'")
            if status == 404:
                return self._error(f"model '{self.model}' not found at {url} (404: {detail}): check --model, "
                                   "and that --base-url ends where the API starts (often /v1)")
            if status == 429:
                return self._error(f"the LLM server at {url} is rate limiting requests (429){retries}: "
                                   "wait a minute and try again")
            if status >= 500:
                return self._error(f"the LLM server at {url} failed with HTTP {status}{retries} ({detail}): "
                                   "check the server's log, then try again")
            if _too_long(detail, exc.body):
                return self._error(f"the LLM server at {url} rejected the prompt as too long for its context window "
                                   f"(HTTP {status}: {detail})", PromptTooLong, _server_window(detail, exc.body),
                                   _first_number(_REQUESTED, detail, exc.body))
            hint = " or --llm-mode json" if self.mode != "json" else ""
            return self._error(f"the LLM server at {url} rejected the request (HTTP {status}: {detail}): "
                               f"check --model{hint}; a smaller --context-window helps if the prompt is too long")
        if isinstance(exc, openai.APIResponseValidationError):
            return self._unusable(str(exc))
        return self._error(f"the request to the LLM server at {url} failed ({exc}): check --base-url and --model")

    def _unusable(self, detail: str) -> LLMError:
        return self._error(f"the LLM server at {self.base_url} sent an unusable response: {detail} — "
                           "check that --base-url points at an OpenAI-compatible /v1 API")

    def _error(self, text: str, kind: type[LLMError] | None = None, server_window: int | None = None,
               requested: int | None = None) -> LLMError:
        """An LLMError with the credentials scrubbed out, whatever the server echoed back."""
        text = self.scrub(text)
        if kind is PromptTooLong:
            return PromptTooLong(_one_line(text), server_window, requested)
        return (kind or LLMError)(_one_line(text))

    def scrub(self, text: str) -> str:
        """`text` without the API key, the URL's password, or their Bearer/Basic encodings."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


class _ToolsRejected(Exception):
    """The server refused the request because it carried tools (auto mode then switches to json)."""


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
        found = _call_from_object(obj) if isinstance(obj, dict) else None
        if found is not None:
            name, arguments = found
            thoughts = obj.get("thoughts") or obj.get("thought")  # type: ignore[union-attr]
            if not isinstance(thoughts, str) or not thoughts.strip():
                thoughts = text[:start].replace("```json", "").replace("```", "").strip()
            return _tool_call(_new_id(), name, arguments), thoughts or None
        start = text.find("{", start + 1)
    return None, text


def _call_from_object(obj: dict[str, Any]) -> tuple[str, str] | None:
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
def _native_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send an object instead of JSON text
            arguments = "" if arguments is None else json.dumps(arguments)
        calls.append(_tool_call(str(call.get("id") or _new_id()), str(function.get("name") or ""), arguments))
    return calls


def _tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A ToolCall; arguments past MAX_ARGUMENT_CHARS are cut to a short prefix plus a note.

    The cut text is never valid JSON, so the agent refuses the call and tells the model, and megabytes of
    runaway output never enter the context or the session store.
    """
    if len(arguments) > MAX_ARGUMENT_CHARS:
        arguments = (f"{arguments[:KEPT_ARGUMENT_CHARS]} ... [docqa cut these arguments: {len(arguments)} "
                     f"characters is over the limit of {MAX_ARGUMENT_CHARS}]")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _rejects_tools(message: str) -> bool:
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


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or json.dumps(body)
    else:
        detail = body or exc.message
    return _one_line(str(detail))[:300]


def _seconds(timeout: Any, default: float) -> float:
    """The read timeout in seconds of a float or an httpx Timeout."""
    read = getattr(timeout, "read", timeout)
    return float(read) if isinstance(read, int | float) and not isinstance(read, bool) else default


# How servers word a prompt that is over the window, and where they say the window's size:
# vLLM and OpenAI "This model's maximum context length is 2048 tokens. However, you requested ...";
# llama-cpp-python "Requested tokens (2209) exceed context window of 2048"; llama.cpp's server
# "the request exceeds the available context size" with n_ctx in the error object; LM Studio "... the
# model is loaded with context length of only 2048 tokens"; TGI "`inputs` tokens + `max_new_tokens` must
# be <= 4096".
_TOO_LONG = re.compile(r"context length|context window|context size|context_length_exceeded|maximum context|"
                       r"too many tokens|prompt is too long|must be <= \d+", re.IGNORECASE)
_WINDOW = [re.compile(p, re.IGNORECASE) for p in (
    r"maximum context length is (\d+)", r"context window of (\d+)", r"context length of only (\d+)",
    r'"n_ctx"\s*:\s*(\d+)', r"must be <= (\d+)")]


def _too_long(detail: str, body: object) -> bool:
    return bool(_TOO_LONG.search(detail) or _TOO_LONG.search(json.dumps(body, default=str)))


# Where they say how many tokens the refused prompt had (vLLM/OpenAI, llama-cpp-python, llama.cpp, TGI).
_REQUESTED = [re.compile(p, re.IGNORECASE) for p in (
    r"(\d+) in the messages",  # vLLM's count of the prompt alone; its "you requested N" adds max_tokens
    r"you requested (\d+) tokens", r"your messages resulted in (\d+) tokens", r"requested tokens \((\d+)\)",
    r'"n_prompt_tokens"\s*:\s*(\d+)', r"given: (\d+) `inputs` tokens", r"request has (\d+) input tokens")]


def _server_window(detail: str, body: object) -> int | None:
    return _first_number(_WINDOW, detail, body)


def _first_number(patterns: list[re.Pattern[str]], detail: str, body: object) -> int | None:
    text = f"{detail} {json.dumps(body, default=str)}"
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def _url_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


def _basic_auth(url: str) -> tuple[str, dict[str, str], list[str]]:
    """(URL without user:password, headers sending them as HTTP Basic auth, the secrets to scrub)."""
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    secrets = [password, parts.password or "", token, f"{user}:{password}"]
    return bare, {"Authorization": f"Basic {token}"}, [s for s in secrets if s and password]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _display_url(url: str) -> str:
    """The base URL for messages: without user:password or query, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
