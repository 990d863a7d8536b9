"""Message shaping: the agent's history as the chat templates of real servers accept it.

Servers (vLLM, llama.cpp, Ollama, LM Studio) turn `messages` into a prompt with the model's Jinja chat
template, and templates are strict: Hermes/Qwen needs `name` on tool messages, Gemma and Mistral raise
unless user and assistant alternate, Mistral has no place for a system message. `for_templates` makes the
last fixes every request gets; `to_json_mode` rewrites the history for servers without tool calling.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FUNCTION_RESULT_PREFIX = "FUNCTION RESULT"  # json mode: how function results reach the model

JSON_MODE_INSTRUCTIONS = """# Functions
You act by calling the functions listed below. To call one, reply with exactly one JSON object and \
nothing else, in this form:
{"thoughts": "<short private reasoning, optional>", "function": "<function name>", "arguments": {<arguments \
matching the function's parameters>}}
The result comes back in a user message that starts with "FUNCTION RESULT (<function name>):".

Available functions:"""



# -- json mode ------------------------------------------------------------------------------------
def to_json_mode(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The history rewritten for a server without tool calling: calls as JSON text, results as user messages.

    With `tools`, the first system message also describes the functions and how to call them.
    """
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, to label each result
    described = not tools
    for message in messages:
        role = message.get("role")
        content = message_text(message.get("content"))
        if role == "system" and not described:
            out.append({"role": "system", "content": f"{content}\n\n{describe_functions(tools or [])}".lstrip()})
            described = True
        elif role == "assistant" and message.get("tool_calls"):
            lines = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                names[call.get("id", "")] = name = str(function.get("name") or "")
                lines.append(json_call_text(name, str(function.get("arguments") or ""), content))
                content = ""  # the thoughts go with the first call only
            out.append({"role": "assistant", "content": "\n".join(lines)})
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "function")
            out.append({"role": "user", "content": f"{FUNCTION_RESULT_PREFIX} ({name}):\n{content}"})
        else:
            out.append({"role": role, "content": content})  # drops fields a plain chat server may reject
    if not described:
        out.insert(0, {"role": "system", "content": describe_functions(tools or [])})
    return out


def describe_functions(tools: list[dict[str, Any]]) -> str:
    """The json-mode system text: how to call a function, then each function with its parameter schema."""
    parts = [JSON_MODE_INSTRUCTIONS]
    for tool in tools:
        function = tool.get("function") or {}
        parts.append(f"\n## {function.get('name')}\n{function.get('description') or ''}\n"
                     f"Parameters (JSON schema): {json.dumps(function.get('parameters') or {})}")
    return "\n".join(parts)


def json_call_text(name: str, arguments: str, thoughts: str = "") -> str:
    """One call as the JSON object json mode asks the model for (arguments kept raw if they are not JSON)."""
    try:
        parsed: Any = json.loads(arguments or "{}")
    except ValueError:
        parsed = arguments
    call: dict[str, Any] = {"thoughts": thoughts} if thoughts else {}
    call.update(function=name, arguments=parsed)
    return json.dumps(call)


def for_templates(messages: list[dict[str, Any]], *, fold_system: bool = False) -> list[dict[str, Any]]:
    """The messages as strict templates accept them (new dicts; the input is left alone).

    - every tool message carries `name`, the function it answers (Hermes/Qwen raise without it);
    - call ids are 9 letters or digits (Mistral's templates raise on any other), mapped one to one;
    - consecutive user messages are merged into one, so user and assistant alternate;
    - with `fold_system`, the system text goes at the head of the first user message instead, for
      templates that have no system role (Mistral's keeps system text only before the last user message).
    """
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        message = dict(message)
        role = message.get("role")
        if message.get("tool_calls"):
            message["tool_calls"] = [{**call, "id": call_id(str(call.get("id")))} for call in message["tool_calls"]]
        for call in message.get("tool_calls") or []:
            names[call["id"]] = str((call.get("function") or {}).get("name") or "")
        if role == "tool":
            message["tool_call_id"] = call_id(str(message.get("tool_call_id")))
            if not message.get("name"):
                message["name"] = names.get(message["tool_call_id"], "function")
        if role == "user" and out and out[-1].get("role") == "user":
            joined = f"{message_text(out[-1].get('content'))}\n\n{message_text(message.get('content'))}"
            out[-1] = {**out[-1], "content": joined}
            continue
        out.append(message)
    if fold_system:
        out = _fold_system(out)
    return out


def call_id(original: str) -> str:
    """A call id as Mistral's templates demand it (exactly 9 letters or digits), the same for the same id."""
    if len(original) == 9 and original.isalnum():
        return original
    return hashlib.sha256(original.encode()).hexdigest()[:9]


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System text moved into the first user message, which is created if there is none."""
    system = "\n\n".join(message_text(m.get("content")) for m in messages if m.get("role") == "system")
    rest = [m for m in messages if m.get("role") != "system"]
    if not system:
        return rest
    for i, message in enumerate(rest):
        if message.get("role") == "user":
            rest[i] = {**message, "content": f"{system}\n\n---\n\n{message_text(message.get('content'))}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def message_text(content: Any) -> str:
    """Message content as text; some servers send a list of parts instead of a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
