"""A real OpenAI-protocol HTTP server on localhost that plays a deterministic policy, with fault injection.

    with FakeLLMServer(scripted_policy([("archival_memory_search", {"query": "x"})])) as server:
        client = ChatClient("fake", base_url=server.base_url)

A policy is a function of the request body alone (messages, tools) that returns a chat.completion dict,
built with `tool_call_response`, `text_response` or `json_mode_response`. The server then plays the
model's part of the protocol:

- it fills in `usage` (prompt tokens estimated from the request's size, so context growth is visible)
  unless the policy set `usage` itself (set it to None to send none);
- a request without `tools` cannot get native tool calls back, so tool calls the policy returns are
  written into the content as the JSON object json mode asks for, the way a model following that
  instruction would. Policies therefore work unchanged in tools and json mode.

It also checks requests the way OpenAI does (a tool message must answer a call of the assistant message
before it; tool_choice needs tools) and answers 400 otherwise, so protocol bugs fail tests.

Faults are a queue consumed one per request, before the policy runs: "500", "429" or any other 4xx/5xx
status (the error message echoes the request's API key, as leaky servers do, so scrubbing is tested; 429
and 5xx say retry-after-ms: 10 so retries are quick), "hang" (no answer for 5 s), "non_json",
"empty_choices", "close" (socket closed mid-body), "huge_args" (a 10 MB archival_memory_search call).
"reject_tools" is not consumed: every request that carries tools gets a 400 saying tools are not supported.
"echo_auth" answers 403 with a message that echoes the request's Authorization header, decoded too if it is
Basic auth, and the URL it was sent to (as servers that log the request into the error do), so scrubbing of
URL passwords is tested. `add_faults` queues more while the server runs; `.authorizations` holds each chat
request's Authorization header, `.get_authorizations` each GET's (the model and window probes).

A policy may raise `ServerReply(status, message)` to answer that HTTP error instead of a completion, e.g. vLLM's
400 "This model's maximum context length is 2048 tokens. However, you requested 2209 tokens ...".

Server metadata and chat templates (all optional; without them the server behaves as described above):

- `template`: a chat template's name from testkit/templates.py (or its source text). Each chat-completions
  request that passes the protocol checks is rendered through it with the request's `messages` and `tools`
  (tools only when the body has them; `tool_choice` and `chat_template_kwargs` are passed on too), the way
  vLLM renders it, before any fault or the policy runs. A template error is answered as vLLM does: HTTP 400
  with the template's message (e.g. "Conversation roles must alternate user/assistant/user/assistant/...").
  `.prompts` holds every rendered prompt, and usage.prompt_tokens is then estimated from the rendered
  prompt (`estimate`), as vLLM counts the prompt it built.
- `models`: the model ids GET /v1/models lists (default ["fake"]); `model_info`: extra fields merged into
  every entry there (e.g. {"max_model_len": 2500}, as vLLM sends).
- `props`: if given, GET /props (at the root, without /v1, as llama.cpp's server has it) answers this JSON,
  e.g. {"default_generation_settings": {"n_ctx": 2048}, "n_ctx": 2048}; otherwise /props is a 404.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai.types.chat import ChatCompletion

from testkit.serving import LocalServer

Policy = Callable[[dict[str, Any]], dict[str, Any]]

HANG_SECONDS = 5.0  # longer than the ~1 s client timeout tests use, short enough never to stall a run
FAST_RETRY = {"Retry-After": "0", "retry-after-ms": "10"}  # the openai client honours retry-after-ms
ONE_SHOT_FAULTS = {"hang", "non_json", "empty_choices", "close", "huge_args", "echo_auth"}
RESULT_PREFIX = re.compile(r"^FUNCTION RESULT \(([^)]*)\):\n?")
ROLES = {"system", "developer", "user", "assistant", "tool"}
_ids = itertools.count(1)  # deterministic ids make failing tests easier to read


class ServerReply(Exception):  # noqa: N818 (an answer, not an error of the server's own)
    """Raised by a policy: the server answers HTTP `status` with this error `message` (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class _QuietServer(ThreadingHTTPServer):
    """A client that drops a kept-alive connection is normal (real servers log nothing): no traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLMServer(LocalServer):
    """The server, as a context manager; `.base_url` ends in /v1, `.requests` holds every JSON body received."""

    def __init__(self, policy: Policy, *, faults: list[str] | None = None, template: str | None = None,
                 models: list[str] | None = None, model_info: dict[str, Any] | None = None,
                 props: dict[str, Any] | None = None) -> None:
        faults = list(faults or [])
        for fault in faults:
            if fault not in ONE_SHOT_FAULTS | {"reject_tools"} and not re.fullmatch(r"[45]\d\d", fault):
                raise ValueError(f"unknown fault {fault!r}")
        self.policy = policy
        self.reject_tools = "reject_tools" in faults
        self.faults = [f for f in faults if f != "reject_tools"]
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []  # the Authorization header of each request, in order
        self.get_authorizations: list[str] = []  # the same for each GET (GET /v1/models, /props ...)
        if template is not None:
            from testkit import templates  # only template mode needs jinja2

            if template not in templates.TEMPLATES and "{" not in template:
                raise ValueError(f"unknown chat template {template!r}; have {templates.TEMPLATES}")
        self.template = template
        super().__init__()
        self.prompts: list[str] = []  # each rendered prompt, in order (template mode)
        self.models = list(models) if models is not None else ["fake"]
        self.model_info = dict(model_info or {})
        self.props = props
        self._lock = threading.Lock()

    server_class = _QuietServer

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def add_faults(self, *faults: str) -> None:
        """Queue more faults while the server runs (e.g. to fail the third request)."""
        with self._lock:
            self.faults.extend(faults)

    # -- what one request gets -------------------------------------------------------------
    def _answer(self, body: dict[str, Any], authorization: str,
                url: str = "") -> tuple[int, dict[str, str], bytes | str]:
        """(status, headers, body) for one chat-completions request; a str body is sent as-is."""
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(authorization)
            if self.reject_tools and "tools" in body:
                return _error(400, "tools is not supported by this model", "invalid_request_error")
            fault = self.faults.pop(0) if self.faults else None
        problem = _protocol_problem(body)
        if problem:
            return _error(400, problem, "invalid_request_error")
        prompt = None
        if self.template is not None:
            from testkit import templates

            try:
                prompt = templates.render(self.template, body["messages"], body.get("tools"),
                                          tool_choice=body.get("tool_choice"),
                                          **(body.get("chat_template_kwargs") or {}))
            except templates.TemplateError as exc:  # vLLM: 400 with the template's own message
                return _error(400, exc.reason, "BadRequestError")
            with self._lock:
                self.prompts.append(prompt)
        if fault == "429":
            return _error(429, "Rate limit reached; retry after 0 s", "rate_limit_error", FAST_RETRY)
        if fault and fault.isdigit():  # the message echoes the key, as leaky servers do: the client scrubs it
            key = authorization.removeprefix("Bearer ")
            return _error(int(fault), f"fake server error {fault} (key {key})", "server_error", FAST_RETRY)
        if fault == "echo_auth":
            return _error(403, f"not authorised: {authorization} ({_decoded(authorization)}) for {url}",
                          "authentication_error")
        if fault == "hang":
            self.stopping.wait(HANG_SECONDS)
            return 0, {}, b""  # by now the client has given up; send nothing
        if fault == "non_json":
            return 200, {"Content-Type": "text/html"}, "<html>oops"
        if fault == "close":
            return -1, {}, b""
        if fault == "empty_choices":
            response = text_response("unused")
            response["choices"] = []
            return 200, {}, json.dumps(response).encode()
        if fault == "huge_args":
            response = tool_call_response("archival_memory_search", {"query": "x" * 10_000_000})
        else:
            try:
                response = self.policy(body)
            except ServerReply as reply:
                return _error(reply.status, reply.message, reply.kind)
            except Exception as exc:  # a broken policy should fail the test with its own message
                return _error(500, f"policy raised {type(exc).__name__}: {exc}", "server_error",
                              {"x-should-retry": "false"})
        return 200, {}, json.dumps(_finish(response, body, prompt)).encode()


def _handler_for(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with server._lock:
                server.get_authorizations.append(self.headers.get("Authorization", ""))
            path = self.path.split("?")[0].rstrip("/")
            if path == "/v1/models":
                self._send(200, {}, json.dumps({"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "docqa-tests", **server.model_info}
                    for model in server.models]}).encode())
            elif path == "/props" and server.props is not None:
                self._send(200, {}, json.dumps(server.props).encode())
            else:
                self._send(*_error(404, f"no route GET {self.path}", "invalid_request_error"))

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(*_error(404, f"no route POST {self.path}", "invalid_request_error"))
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(*_error(400, "request body is not JSON", "invalid_request_error"))
                return
            url = f"http://{self.headers.get('Host', '')}{self.path}"
            status, headers, payload = server._answer(body, self.headers.get("Authorization", ""), url)
            if status == 0:
                self.close_connection = True
            elif status == -1:  # headers promising a body, half of it, then the socket closes
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"id": "chatcmpl-')
                self.wfile.flush()
                self.close_connection = True
            else:
                self._send(status, headers, payload)

        def _send(self, status: int, headers: dict[str, str], payload: bytes | str) -> None:
            data = payload.encode() if isinstance(payload, str) else payload
            try:
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout); nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

    return Handler


def _error(status: int, message: str, kind: str,
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return status, dict(headers or {}), json.dumps(body).encode()


def _decoded(authorization: str) -> str:
    """What a Basic Authorization header says in clear (user:password), else the header itself."""
    import base64
    import binascii

    if not authorization.startswith("Basic "):
        return authorization
    try:
        return base64.b64decode(authorization.removeprefix("Basic ")).decode()
    except (binascii.Error, UnicodeDecodeError):
        return authorization


def _protocol_problem(body: dict[str, Any]) -> str | None:
    """What OpenAI would reject this request for (the checks that catch client and agent bugs)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if "tool_choice" in body and not body.get("tools"):
        return "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
    pending: set[str] = set()  # call ids of the last assistant message not yet answered
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return f"Invalid value for 'messages[{i}].role': {role!r}"
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return (f"Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                        f"message with 'tool_calls' (messages[{i}])")
            pending.discard(message["tool_call_id"])
            continue
        if pending:
            return (f"An assistant message with 'tool_calls' must be followed by tool messages responding to "
                    f"each 'tool_call_id'. Missing: {sorted(pending)} (before messages[{i}])")
        if role == "assistant":
            pending = {c.get("id") for c in message.get("tool_calls") or []}
    return None


def _finish(response: dict[str, Any], body: dict[str, Any], prompt: str | None = None) -> dict[str, Any]:
    """Play the model's part: JSON-mode text for tool calls when no tools were offered, usage, model name.

    `prompt` is the rendered prompt in template mode: usage then counts it instead of the request's JSON.
    """
    response = json.loads(json.dumps(response))  # never mutate what the policy may keep
    response.setdefault("model", body.get("model", "fake"))
    for choice in response.get("choices") or []:
        message = choice.get("message") or {}
        calls = message.get("tool_calls")
        if calls and "tools" not in body:
            lines = []
            for n, call in enumerate(calls):
                function = call["function"]
                obj: dict[str, Any] = {"thoughts": message.get("content")} if message.get("content") and not n else {}
                obj.update(function=function["name"], arguments=_loads_or_text(function["arguments"]))
                lines.append(json.dumps(obj))
            message["content"], message["tool_calls"] = "\n".join(lines), None
            choice["finish_reason"] = "stop"
    if "usage" not in response:
        prompt_tokens = (estimate(prompt) if prompt is not None else
                         estimate(json.dumps(body.get("messages")) + json.dumps(body.get("tools") or [])))
        completion = sum(estimate(json.dumps(c.get("message"))) for c in response.get("choices") or [])
        response["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion}
    return response


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def estimate(text: str) -> int:
    return max(1, len(text) // 4)


# -- responses a policy returns ------------------------------------------------------------------
def completion(message: dict[str, Any], finish_reason: str) -> dict[str, Any]:
    """A chat.completion holding one message, checked against the openai package's own type."""
    response = {"id": f"chatcmpl-fake{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
                "model": "fake", "choices": [{"index": 0, "message": message, "finish_reason": finish_reason,
                                              "logprobs": None}]}
    ChatCompletion.model_validate(response)
    del response["model"]  # the server fills in the requested model name
    return response


def tool_call_response(name: str, arguments: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    """The model calls `name(**arguments)`, with `content` as its inner thoughts."""
    call = {"id": f"call_fake{next(_ids)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}
    return completion({"role": "assistant", "content": content, "tool_calls": [call]}, "tool_calls")


def text_response(content: str) -> dict[str, Any]:
    """The model answers with plain text and no call."""
    return completion({"role": "assistant", "content": content}, "stop")


def json_mode_response(name: str, arguments: dict[str, Any], thoughts: str | None = None) -> dict[str, Any]:
    """The model writes the call as json mode's JSON object in its text (what a model without tools does)."""
    obj: dict[str, Any] = {"thoughts": thoughts} if thoughts else {}
    obj.update(function=name, arguments=arguments)
    return text_response(json.dumps(obj))


# -- reading a request ---------------------------------------------------------------------------
def is_json_mode(body: dict[str, Any]) -> bool:
    """Whether the request offers no native tools (json mode; also any plain chat such as a summary)."""
    return "tools" not in body


def wants_function_call(body: dict[str, Any]) -> bool:
    """Whether the client offered functions, natively or as json mode's instructions (not a summary request)."""
    if "tools" in body:
        return True
    messages = body.get("messages") or [{}]
    # The system message, or the first user message when the client folds the system text into it.
    system = next((m.get("content") or "" for m in messages if m.get("role") == "system"),
                  messages[0].get("content") or "")
    return '"function"' in system and "FUNCTION RESULT" in system


def last_tool_results(body: dict[str, Any]) -> list[str]:
    """Every function result in the conversation, oldest first: `tool` messages or json mode's result messages."""
    results = []
    for message in body.get("messages", []):
        content = message.get("content") or ""
        if message.get("role") == "tool":
            results.append(content)
        elif message.get("role") == "user" and RESULT_PREFIX.match(content):
            results.append(RESULT_PREFIX.sub("", content, count=1))
    return results


# -- generic policies ----------------------------------------------------------------------------
def scripted_policy(calls: list[tuple[str, dict[str, Any]]]) -> Policy:
    """Make the calls in order, one per request that offers functions, then send_message("done").

    Requests that offer no functions (e.g. a summary) get a short text answer and do not advance the script.
    """
    remaining = list(calls)
    lock = threading.Lock()

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        if not wants_function_call(body):
            return text_response("Summary: the conversation so far.")
        with lock:
            name, arguments = remaining.pop(0) if remaining else ("send_message", {"message": "done"})
        return tool_call_response(name, arguments)

    return policy


def never_send_policy() -> Policy:
    """Search archival memory forever with heartbeats and never answer (for step limits)."""

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        if not wants_function_call(body):
            return text_response("Summary: the conversation so far.")
        return tool_call_response("archival_memory_search", {"query": "anything", "request_heartbeat": True})

    return policy
