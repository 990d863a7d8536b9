"""Real servers' Jinja chat templates, rendered the way the servers render them.

    render("gemma3_pythonic", [{"role": "user", "content": "hi"}], tools=None)  # -> the prompt text
    render("gemma3_pythonic", [system, system, user])  # raises TemplateError (roles must alternate)

The templates are the files in tests/chat_templates/ (see SOURCES.md there for where each came from);
`TEMPLATES` lists their names (the file stems). `render` takes a name or a template's source text.

Two ways of rendering, as the servers that use these templates do:

- vLLM (every template but chatml_function_calling): the request's messages are first rebuilt the way
  vLLM's chat_utils does (only role, content, tool_calls, tool_call_id and name survive; content None
  becomes ""; content is a string, or a list of {"type": "text"} parts when the template loops over
  `message.content`, vLLM's "openai" content format; every assistant `tool_calls[*].function.arguments`
  JSON string becomes a dict, {} when empty or not a JSON object; an empty tool_calls list is dropped;
  "developer" becomes "system" when the template never mentions "developer"), then rendered as
  transformers' apply_chat_template does: ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks,
  loopcontrols, the {% generation %} tag), `raise_exception`, `strftime_now`, transformers' `tojson`,
  default (not strict) Undefined, and the variables messages, tools (None when the request has none),
  documents=None, add_generation_prompt and the model family's special tokens (bos_token, eos_token...).
- llama-cpp-python's "chatml-function-calling" handler: its own environment (StrictUndefined, HTML
  autoescape as `select_autoescape(["html", "xml"])` gives string templates, jinja's own tojson), the
  messages as sent (arguments stay strings), and tools=[...], tool_calls=True only when the request has
  tools and a tool_choice other than "none" (with no tool_choice it renders tools=[], tool_calls=None).

Whatever goes wrong while rendering (raise_exception, an undefined attribute, a TypeError such as
str + None) is raised as `TemplateError`; vLLM answers such a request with 400 and that message.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "tests" / "chat_templates"
TEMPLATES: list[str] = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))

_LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
_MISTRAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
_QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}  # Qwen's tokenizer has no bos token
_DEEPSEEK = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
_GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
_GRANITE = {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>"}

# The special tokens each model family's tokenizer passes to its template (transformers passes them all).
SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "chatml_function_calling": {},
    "command_r_plus": {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>"},
    "deepseek_r1_qwen": _DEEPSEEK,
    "deepseekv3": _DEEPSEEK,
    "functionary3.2": _LLAMA3,
    "gemma2": _GEMMA,
    "gemma3_pythonic": _GEMMA,
    "gpt_oss": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"},
    "granite": _GRANITE,
    "granite3.3": _GRANITE,
    "hermes": {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"},  # Hermes 2 Pro (Llama 3)
    "hermes2pro": {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"},
    "internlm2_tool": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "llama3.1": _LLAMA3,
    "llama3.1_json": _LLAMA3,
    "llama3.2": _LLAMA3,
    "llama3.2_json": _LLAMA3,
    "mistral": _MISTRAL,
    "mistral_nemo": _MISTRAL,
    "phi3.5": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "phi4_mini": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "qwen2.5": _QWEN,
    "qwen3": _QWEN,
    "toolace": _LLAMA3,
}
LLAMA_CPP_PYTHON = {"chatml_function_calling"}  # rendered by llama-cpp-python's handler, not transformers


class TemplateError(Exception):
    """A chat template rejected the messages (or broke on them); `.reason` is the template's own message."""

    def __init__(self, reason: str, template: str = "<source>") -> None:
        super().__init__(f"chat template {template}: {reason}")
        self.reason = reason
        self.template = template


def load(name: str) -> str:
    """The source text of the template `name` (a file stem in tests/chat_templates/)."""
    if name not in TEMPLATES:
        raise KeyError(f"no chat template {name!r}; have {TEMPLATES}")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def render(name_or_source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *,
           add_generation_prompt: bool = True, tool_choice: Any = None, **template_kwargs: Any) -> str:
    """The prompt the server would build from this request, or TemplateError where it would answer 400.

    `tool_choice` matters to llama-cpp-python only: without one (or with "none") its handler renders no
    functions at all. `template_kwargs` are extra variables (vLLM's chat_template_kwargs).
    """
    if name_or_source in TEMPLATES:
        name, source = name_or_source, load(name_or_source)
    else:
        name, source = "<source>", name_or_source
    try:
        if name in LLAMA_CPP_PYTHON:
            offered = bool(tools) and tool_choice not in (None, "none")
            return _llama_cpp_python_template(source).render(
                messages=copy.deepcopy(messages), tools=copy.deepcopy(tools) if offered else [],
                tool_calls=True if offered else None, add_generation_prompt=add_generation_prompt,
                **template_kwargs)
        conversation = vllm_conversation(messages, source)
        variables = {**SPECIAL_TOKENS.get(name, {}), **template_kwargs}
        return _transformers_template(source).render(
            messages=conversation, tools=copy.deepcopy(tools), documents=None,
            add_generation_prompt=add_generation_prompt, **variables)
    except TemplateError:
        raise
    except Exception as exc:  # vLLM turns any failure of apply_chat_template into a 400
        raise TemplateError(str(exc) or type(exc).__name__, name) from exc


# -- what vLLM does to the messages before the template sees them -----------------------------------
def vllm_conversation(messages: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """The messages as vLLM's chat_utils rebuilds them for this template."""
    openai_format = content_format(source) == "openai"
    conversation = []
    for message in copy.deepcopy(messages):
        role = message["role"]
        content = message.get("content")
        parts = [] if content is None else [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts = [p if isinstance(p, str) else p.get("text") for p in parts]
        texts = [t for t in texts if t is not None]
        if openai_format and role != "tool":
            out: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": t} for t in texts]}
        else:  # vLLM flattens tool results' text parts to a string in either format
            out = {"role": role, "content": "\n".join(texts)}
        if role == "assistant" and message.get("tool_calls") is not None:
            out["tool_calls"] = list(message["tool_calls"])
        elif role == "tool" and "tool_call_id" in message:
            out["tool_call_id"] = message["tool_call_id"]
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
        conversation.append(out)
    for message in conversation:
        if message["role"] == "assistant" and isinstance(message.get("tool_calls"), list):
            if not message["tool_calls"]:
                del message["tool_calls"]
                continue
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    try:
                        arguments = json.loads(arguments)
                    except ValueError:
                        arguments = {}
                function["arguments"] = arguments if isinstance(arguments, dict) else {}
    if any(m["role"] == "developer" for m in conversation) and not (
            '"developer"' in source or "'developer'" in source):
        conversation = _developer_to_system(conversation)
    return conversation


def _developer_to_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's fallback for templates without a developer role: one merged system message, first."""
    converted = [{**m, "role": "system"} if m["role"] == "developer" else m for m in conversation]
    systems = [i for i, m in enumerate(converted) if m["role"] == "system"]
    if systems in ([], [0]):
        return converted
    texts = []
    for i in systems:
        content = converted[i].get("content", "")
        if isinstance(content, list):
            content = "\n".join(p["text"] if isinstance(p, dict) else p for p in content
                                if isinstance(p, str) or "text" in p)
        if content:
            texts.append(content)
    return [{"role": "system", "content": "\n\n".join(texts)}] + [m for m in converted if m["role"] != "system"]


@lru_cache(maxsize=64)
def content_format(source: str) -> str:
    """vLLM's "auto" content format: "openai" when the template loops over a message's content, else "string"."""
    try:
        ast = _transformers_environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return "string"
    message_names = set(_loop_targets(ast, _names_derived_from(ast, "messages")))
    for loop in ast.find_all(jinja2.nodes.For):
        node = _strip(loop.iter)
        if isinstance(node, jinja2.nodes.Name) and node.name == "content":
            return "openai"
        if isinstance(node, jinja2.nodes.Getattr | jinja2.nodes.Getitem):
            key = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
            base = _strip(node.node)
            if key == "content" and isinstance(base, jinja2.nodes.Name) and base.name in message_names:
                return "openai"
    return "string"


def _strip(node: jinja2.nodes.Node) -> jinja2.nodes.Node:
    """Look through filters, tests and slices (`messages[1:]`, `message.content | selectattr(...)`)."""
    while True:
        filtered = isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test) and node.node is not None
        sliced = isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice)
        if not (filtered or sliced):
            return node
        node = node.node


def _names_derived_from(ast: jinja2.nodes.Template, root: str) -> set[str]:
    names, queue = {root}, deque([root])
    while queue:
        current = queue.popleft()
        for assign in ast.find_all(jinja2.nodes.Assign):
            rhs = _strip(assign.node)
            if (isinstance(assign.target, jinja2.nodes.Name) and isinstance(rhs, jinja2.nodes.Name)
                    and rhs.name == current and assign.target.name not in names):
                names.add(assign.target.name)
                queue.append(assign.target.name)
    return names


def _loop_targets(ast: jinja2.nodes.Template, iterables: set[str]) -> list[str]:
    targets = []
    for loop in ast.find_all(jinja2.nodes.For):
        node = _strip(loop.iter)
        if isinstance(node, jinja2.nodes.Name) and node.name in iterables and isinstance(loop.target,
                                                                                      jinja2.nodes.Name):
            targets.append(loop.target.name)
    return targets


# -- the environments ---------------------------------------------------------------------------------
class _AssistantTracker(jinja2.ext.Extension):
    """transformers' {% generation %} ... {% endgeneration %} tag, which renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    def _generation_support(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson: no HTML escaping, and json.dumps' options."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 (transformers' own signature)
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _transformers_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def _transformers_template(source: str) -> jinja2.Template:
    return _transformers_environment().from_string(source)


@lru_cache(maxsize=8)
def _llama_cpp_python_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(autoescape=jinja2.select_autoescape(["html", "xml"]),
                                        undefined=jinja2.StrictUndefined)
    return env.from_string(source)
