"""The agent's functions: typed, documented Python methods. Their JSON schemas are generated from the
signatures and docstrings (the docstrings are the prompt the model reads). They touch nothing but
docqa's own memory: no files, no shell, no network.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from docqa.agent.context import MainContext
from docqa.agent.memory import ToolError
from docqa.archive.records import ChunkRecord
from docqa.archive.store import ArchivalStore

MAX_ARGUMENT_CHARS = 20_000  # a call bigger than this is refused, never parsed


@dataclass(frozen=True)
class ToolOutcome:
    name: str
    arguments: dict[str, Any]
    result: str
    ok: bool
    heartbeat: bool  # run the agent again right away
    message: str | None = None  # set by send_message


class Toolbox:
    """The functions one agent may call, bound to its memory."""

    NAMES = ("send_message", "archival_memory_search", "archival_memory_insert", "conversation_search",
             "core_memory_append", "core_memory_replace")

    def __init__(self, store: ArchivalStore, context: MainContext, page_size: int = 5) -> None:
        self.store = store
        self.context = context
        self.page_size = page_size
        self.seen: dict[str, ChunkRecord] = {}  # archival results shown to the model, for citations
        self.shown: dict[int, str] = {}  # result number in the text -> chunk id
        self.queries: list[str] = []
        self.schemas = [function_schema(getattr(self, name)) for name in self.NAMES]

    def start_turn(self) -> None:
        """Citations cover what the model saw while answering this message only."""
        self.seen.clear()
        self.shown.clear()
        self.queries.clear()

    # -- the functions ----------------------------------------------------------------------
    def send_message(self, message: str) -> str:
        """Sends a message to the human user. This is the only way the user sees what you say; everything
        else you write is your private inner monologue. Put your final answer here, and name the sources
        and pages it comes from.

        Args:
            message: Message contents. All unicode (including emojis) are supported.
        """
        return "Message sent."

    def archival_memory_search(self, query: str, page: int = 0, request_heartbeat: bool = False) -> str:
        """Searches archival memory (the user's documents and what you inserted) using semantic and exact-word
        search, and returns one page of results. Look at later pages when the answer is not on this one.

        Args:
            query: String to search for: words, a phrase, or an exact identifier.
            page: Page of results to return, 0 is the first (best) page.
            request_heartbeat: Request an immediate heartbeat after the function runs. Set to true to chain
                another function call (e.g. another search) before answering.
        """
        if page < 0:
            raise ToolError("page must be 0 or more")
        result = self.store.search(query, page=page, page_size=self.page_size)
        self.queries.append(query)
        for number, hit in enumerate(result.hits, start=page * self.page_size + 1):
            self.seen[hit.record.id] = hit.record
            self.shown[number] = hit.record.id
        return result.format()

    def archival_memory_insert(self, content: str, request_heartbeat: bool = False) -> str:
        """Adds a passage to archival memory, to find later with archival_memory_search. Phrase it so it can
        be found and understood on its own.

        Args:
            content: Content to write to the memory. All unicode (including emojis) are supported.
            request_heartbeat: Request an immediate heartbeat after the function runs. Set to true to chain
                another function call before answering.
        """
        if not content.strip():
            raise ToolError("content is empty")
        from docqa.ingest.pipeline import ingest_text

        source = f"memory://{self.context.session}/{uuid.uuid4().hex[:12]}"
        ingest_text(self.store, source, content)
        return f"Inserted into archival memory ({source})."

    def conversation_search(self, query: str, page: int = 0, request_heartbeat: bool = False) -> str:
        """Searches recall storage: every message of this conversation, including those evicted from your
        context. Returns one page of matching messages.

        Args:
            query: Words to search for.
            page: Page of results to return, 0 is the first page.
            request_heartbeat: Request an immediate heartbeat after the function runs. Set to true to chain
                another function call before answering.
        """
        if page < 0:
            raise ToolError("page must be 0 or more")
        rows, total = self.context.sessions.search(self.context.session, query, page, self.page_size)
        if not rows:
            return "No results found." if not total else f"No results on page {page}."
        pages = math.ceil(total / self.page_size)
        lines = [f"Showing {len(rows)} of {total} results (page {page}/{pages - 1}):"]
        lines += [f"[{role}] {content}" for role, content in rows]
        return "\n".join(lines)

    def core_memory_append(self, label: Literal["persona", "human"], content: str,
                           request_heartbeat: bool = False) -> str:
        """Appends to a block of your core memory, which is always in your context. Keep it to key facts.

        Args:
            label: Section of the memory to edit: persona (who you are) or human (facts about the user).
            content: Content to append. All unicode (including emojis) are supported.
            request_heartbeat: Request an immediate heartbeat after the function runs. Set to true to chain
                another function call before answering.
        """
        self.context.core.append(label, content)
        return f"Appended to core memory block '{label}'."

    def core_memory_replace(self, label: Literal["persona", "human"], old_content: str, new_content: str,
                            request_heartbeat: bool = False) -> str:
        """Replaces text in a block of your core memory. To delete, pass an empty new_content.

        Args:
            label: Section of the memory to edit: persona or human.
            old_content: The exact text to replace.
            new_content: The text to put in its place.
            request_heartbeat: Request an immediate heartbeat after the function runs. Set to true to chain
                another function call before answering.
        """
        self.context.core.replace(label, old_content, new_content)
        return f"Replaced text in core memory block '{label}'."

    # -- the executor -------------------------------------------------------------------------
    def execute(self, name: str, raw_arguments: str) -> ToolOutcome:
        """Validate and run one call; every failure comes back as the function's result, never raised."""
        if name not in self.NAMES:
            return ToolOutcome(name, {}, f"Error: there is no function '{name}'. Available: "
                               f"{', '.join(self.NAMES)}.", ok=False, heartbeat=True)
        if len(raw_arguments) > MAX_ARGUMENT_CHARS:
            return ToolOutcome(name, {}, f"Error: arguments of {len(raw_arguments)} characters are over the "
                               f"limit of {MAX_ARGUMENT_CHARS}; send shorter arguments.", ok=False, heartbeat=True)
        try:
            arguments = json.loads(raw_arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            return ToolOutcome(name, {}, f"Error: arguments are not valid JSON ({exc}); send a JSON object "
                               "matching the function's parameters.", ok=False, heartbeat=True)
        function = getattr(self, name)
        try:
            validated = _arguments_model(function).model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return ToolOutcome(name, arguments, f"Error: bad arguments for {name}: {problems}.",
                               ok=False, heartbeat=True)
        values = validated.model_dump()
        heartbeat = bool(values.get("request_heartbeat", False))
        try:
            result = function(**values)
        except ToolError as exc:
            return ToolOutcome(name, arguments, f"Error: {exc}", ok=False, heartbeat=True)
        message = values["message"] if name == "send_message" else None
        return ToolOutcome(name, arguments, result, ok=True, heartbeat=heartbeat, message=message)

    def citations(self, answer: str) -> list[ChunkRecord]:
        """The archival results the answer rests on: those it numbers ([3]), those holding the answer's
        words, and those that led to a later search (a value searched as the next key)."""
        used: list[str] = []
        for number in re.findall(r"\[(\d+)\]", answer):
            if int(number) in self.shown:
                used.append(self.shown[int(number)])
        needles = _distinctive_terms(answer) | {q.strip() for q in self.queries[1:] if q.strip()}
        for chunk_id, record in self.seen.items():
            text = record.text.lower()
            if any(needle.lower() in text for needle in needles):
                used.append(chunk_id)
        return [self.seen[i] for i in dict.fromkeys(used)]


_STOP = set("the a an and or of to in on for is are was were be by with as at from that this it its which who "
            "what when where why how answer source sources page pages document documents".split())


def _distinctive_terms(text: str) -> set[str]:
    """Identifiers and multi-word phrases of the answer worth looking for in a passage."""
    identifiers = set(re.findall(r"[0-9a-fA-F]{8}-[0-9a-fA-F-]{27,}", text))
    cleaned = re.sub(r"\[\d+\]|\([^)]*page[^)]*\)", " ", text)
    words = [w for w in re.findall(r"[\w'-]+", cleaned) if w.lower() not in _STOP and len(w) > 2]
    phrases = {" ".join(words[i : i + 2]) for i in range(len(words) - 1)}
    return identifiers | phrases | ({words[0]} if len(words) == 1 else set())


def _arguments_model(function: Callable[..., Any]) -> type[pydantic.BaseModel]:
    cached = getattr(function, "__func__", function)
    if not hasattr(cached, "_docqa_model"):
        descriptions = _argument_docs(inspect.getdoc(function) or "")
        fields: dict[str, Any] = {}
        hints = _hints(function)
        for name, parameter in inspect.signature(function).parameters.items():
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[name] = (hints[name], pydantic.Field(default, description=descriptions.get(name)))
        model = pydantic.create_model(f"{function.__name__}_arguments", __config__=pydantic.ConfigDict(
            extra="forbid", strict=False), **fields)
        cached._docqa_model = model
    return cached._docqa_model


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(function)


def _argument_docs(doc: str) -> dict[str, str]:
    """Parse a Google-style `Args:` section into {name: description}."""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    found: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r" {4}(\w+): (.*)$", line)  # an argument; its continuation lines are indented deeper
        if match:
            current = match.group(1)
            found[current] = match.group(2).strip()
        elif current and line.strip():
            found[current] += " " + line.strip()
    return found


def function_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool schema of a function, generated from its signature and docstring."""
    doc = inspect.getdoc(function) or ""
    description = " ".join(doc.split("Args:", 1)[0].split())
    parameters = _arguments_model(function).model_json_schema()
    parameters.pop("title", None)
    parameters.pop("additionalProperties", None)
    for spec in parameters.get("properties", {}).values():
        spec.pop("title", None)
    return {"type": "function", "function": {"name": function.__name__, "description": description,
                                             "parameters": parameters}}
