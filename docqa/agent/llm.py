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

import json
from collections.abc import Callable
from typing import Any

import openai

from docqa.agent.replies import (
    REQUESTED,
    LLMError,
    PromptTooLong,
    Reply,
    ToolCall,
    estimate_messages_tokens,
    estimate_tokens,
    first_number,
    native_calls,
    parse_json_call,
    rejects_tools,
    server_window,
    too_long,
)
from docqa.agent.shaping import for_templates, message_text, to_json_mode
from docqa.agent.urls import basic_auth, display_url, one_line, url_credentials

MODES = ("auto", "tools", "json")
PLACEHOLDER_KEY = "not-needed"  # local servers ignore the key, but the openai client insists on one
OPENAI_URL = "https://api.openai.com/v1"

__all__ = ["MODES", "PLACEHOLDER_KEY", "ChatClient", "LLMError", "PromptTooLong", "Reply", "ToolCall",
           "estimate_messages_tokens", "estimate_tokens"]


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
            # The values given, never the environment's: the `docqa` command resolves OPENAI_* for its users.
            if not api_key:
                if not base_url:
                    raise LLMError("No API key: set OPENAI_API_KEY or pass --api-key "
                                   "(for a local server pass --base-url)")
                api_key = PLACEHOLDER_KEY
            headers: dict[str, str] = {}
            if base_url and url_credentials(base_url):
                base_url, headers, credentials = basic_auth(base_url)
                if api_key != PLACEHOLDER_KEY:
                    self.notices.append("the base URL holds a user name and password, so docqa sends them as HTTP "
                                        "Basic auth and does not send the API key; take them out of the URL to "
                                        "send the key instead")
            try:
                http = openai.DefaultHttpxClient(event_hooks={"request": [self._counted]})
                client = openai.OpenAI(api_key=api_key, base_url=base_url or OPENAI_URL, timeout=timeout,
                                       max_retries=max_retries, default_headers=headers or None, http_client=http)
            except openai.OpenAIError as exc:
                raise LLMError(f"cannot set up the LLM client ({one_line(str(exc))}): check --base-url") from None
        self._client = client
        client_key = getattr(client, "api_key", None)
        self._secrets = [s for s in (api_key, client_key, *credentials)
                         if isinstance(s, str) and len(s) >= 3 and s != PLACEHOLDER_KEY]
        self.base_url = display_url(str(client.base_url))
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
        calls = native_calls(message)
        return self._reply(content, calls, usage, messages, tools)

    def _complete_json(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
        sent = for_templates(to_json_mode(messages, tools), fold_system=self.fold_system)
        message, usage = self._send({"messages": sent})
        content = message_text(message.get("content")) or None
        # A server may still return native calls (some parse them out of the text themselves): take them.
        calls = native_calls(message)
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
            if "tools" in payload and rejects_tools(_server_message(exc)):
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
            if too_long(detail, exc.body):
                return self._error(f"the LLM server at {url} rejected the prompt as too long for its context window "
                                   f"(HTTP {status}: {detail})", PromptTooLong, server_window(detail, exc.body),
                                   first_number(REQUESTED, detail, exc.body))
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
            return PromptTooLong(one_line(text), server_window, requested)
        return (kind or LLMError)(one_line(text))

    def scrub(self, text: str) -> str:
        """`text` without the API key, the URL's password, or their Bearer/Basic encodings."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


class _ToolsRejected(Exception):
    """The server refused the request because it carried tools (auto mode then switches to json)."""


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or json.dumps(body)
    else:
        detail = body or exc.message
    return one_line(str(detail))[:300]


def _seconds(timeout: Any, default: float) -> float:
    """The read timeout in seconds of a float or an httpx Timeout."""
    read = getattr(timeout, "read", timeout)
    return float(read) if isinstance(read, int | float) and not isinstance(read, bool) else default
