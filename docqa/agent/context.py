"""The main context of the MemGPT paper: the prompt the LLM sees, and the queue manager that keeps it
inside the window.

The prompt is one system message (instructions, core memory, memory statistics, the recursive summary)
followed by the FIFO queue. The agent keeps the queue in a shape that strict chat templates accept: turns
that start with the user's message and end with a plain assistant message, and in between one function
call per assistant message, each followed by its result. Eviction keeps that shape: it removes whole
earlier turns, then whole call/result pairs of the current turn, and never the current question or a
result the model has not seen yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from docqa.agent.memory import SUMMARY_HEADING, CoreMemory, SessionStore, message_tokens
from docqa.agent.replies import estimate_tokens

WARNING_FRACTION = 0.70  # memory-pressure alert (the paper's warning token count)
TARGET_FRACTION = 0.50  # evict down to about this
REPLY_RESERVE_FRACTION = 0.125  # of the window kept free for the model's reply (the window holds both)
REPLY_RESERVE_MAX = 512  # a function call or an answer; more only makes a slow local server slower to stop
CUT_NOTE = ("\n[docqa cut this function result to fit the context window: it shows {kept} of {total} characters. "
            "For the rest, ask for the next page, or search with a narrower query.]")
MIN_KEPT_CHARS = 200
NUDGE = "docqa_nudge"  # marks a queue message docqa wrote to keep the model going; never sent to the server

Summarize = Callable[[str, list[dict[str, Any]]], str]


class ContextError(Exception):
    """The prompt cannot fit the window whatever is evicted; str(e) says what to change."""


@dataclass
class MainContext:
    """System instructions + core memory + summary, then the FIFO queue, with the queue manager."""

    system: str
    core: CoreMemory
    session: str
    sessions: SessionStore
    context_window: int
    summary: str = ""
    queue: list[dict[str, Any]] = field(default_factory=list)
    warned: bool = False
    fixed_extra_tokens: int = 0  # what is sent beside the messages: the function schemas
    archival_passages: int | None = None  # for the memory statistics; set at each turn's start
    evicted_total: int = 0
    cut_results: int = 0  # function results cut to fit by the last flush
    # Server-reported size of the last prompt, and how many queue messages it covered.
    _reported: tuple[int, int] | None = None
    _turn_start: int = 0  # index of the current question in the queue
    _seen: int = 0  # queue messages sent to the model so far
    _recalled: int = 0  # recall storage size, as of the turn's start (kept fixed so the prompt prefix is too)

    # -- the prompt -----------------------------------------------------------------------------
    def system_text(self) -> str:
        """The one system message: instructions, core memory, memory statistics, recursive summary."""
        archival = "unknown" if self.archival_passages is None else f"{self.archival_passages:,}"
        statistics = (f"- {self._recalled:,} earlier messages in recall storage (conversation_search)\n"
                      f"- {archival} passages in archival memory (archival_memory_search)\n"
                      f"- {self.evicted_total:,} messages evicted from this context so far")
        return (f"{self.system}\n\n### Core memory\n{self.core.render()}\n\n### Memory statistics\n{statistics}\n\n"
                f"{SUMMARY_HEADING}\n{self.summary or '(nothing evicted yet)'}")

    def messages(self) -> list[dict[str, Any]]:
        """The prompt as chat messages; docqa's own markers are left out."""
        queue = [{k: v for k, v in m.items() if k != NUDGE} for m in self.queue]
        return [{"role": "system", "content": self.system_text()}, *queue]

    # -- the queue --------------------------------------------------------------------------------
    def start_turn(self, user_message: str) -> None:
        """A new question: close any turn left open by an older version, then queue the question."""
        self.close_turn("(The previous turn ended without an answer.)")
        self._recalled = self.sessions.recall_count(self.session)
        self._turn_start = len(self.queue)
        self.append({"role": "user", "content": user_message})

    def append(self, message: dict[str, Any]) -> None:
        """Add to the FIFO queue and write to recall storage, as the paper's queue manager does."""
        self.queue.append(message)
        recalled = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            recalled += f"\n[called {call['function']['name']}({call['function']['arguments'][:2000]})]"
        self.sessions.remember(self.session, message["role"], recalled.strip())

    def nudge(self, text: str) -> None:
        """A reminder from docqa: inside the newest function result if there is one, else a user message.

        A function result is where every template accepts it; after the model's plain reply only a user
        message can follow, and that one is marked so that the turn's end removes it if it is the last.
        """
        last = self.queue[-1] if self.queue else None
        if last is not None and last["role"] in ("tool", "user"):
            last["content"] = f"{last.get('content') or ''}\n\n{text}".lstrip()
        else:
            self.queue.append({"role": "user", "content": text, NUDGE: True})

    def close_turn(self, closing: str) -> None:
        """End the turn on a plain assistant message, so that the next user message alternates.

        A dangling reminder is dropped; a turn that ended on a function result gets `closing` as the
        assistant's last word. An answer sent with send_message becomes that plain message instead of the
        call and its "Message sent." result.
        """
        while self.queue and self.queue[-1].get(NUDGE):
            self.queue.pop()
        if not self.queue:
            return
        last = self.queue[-1]
        if last["role"] == "assistant" and not last.get("tool_calls"):
            return
        self.queue.append({"role": "assistant", "content": closing})

    def answered(self, message: str) -> None:
        """The turn ended with send_message(message): keep the answer as the assistant's plain reply."""
        if (len(self.queue) >= 2 and self.queue[-1]["role"] == "tool" and self.queue[-2]["role"] == "assistant"
                and [c["function"]["name"] for c in self.queue[-2].get("tool_calls") or []] == ["send_message"]):
            del self.queue[-2:]
            self._seen = min(self._seen, len(self.queue))
            self._reported = None
        self.queue.append({"role": "assistant", "content": message})

    # -- sizes ------------------------------------------------------------------------------------
    def note_sent(self, prompt_tokens: int | None = None) -> None:
        """The model has now seen the whole queue; `prompt_tokens` is the server's count of that prompt."""
        self._seen = len(self.queue)
        if prompt_tokens is not None:
            self._reported = (prompt_tokens, len(self.queue))

    def reply_reserve(self) -> int:
        """Tokens of the window kept for the model's reply (and the most it is asked to write)."""
        return min(REPLY_RESERVE_MAX, int(self.context_window * REPLY_RESERVE_FRACTION))

    def budget(self) -> int:
        """Tokens the prompt may use: the window less room for the model's reply."""
        return self.context_window - self.reply_reserve()

    def fixed_tokens(self) -> int:
        """What no eviction can shrink: the system message and the function schemas."""
        return estimate_tokens(self.system_text()) + 4 + self.fixed_extra_tokens

    def tokens(self) -> int:
        """Prompt size: the server's count for what it saw plus an estimate for what it has not (chars/4)."""
        if self._reported is not None and self._reported[1] <= len(self.queue):
            reported, covered = self._reported
            return reported + sum(message_tokens(m) for m in self.queue[covered:])
        return self.fixed_tokens() + sum(message_tokens(m) for m in self.queue)

    def check_fits(self) -> None:
        """Fail before any call when the fixed part of the prompt alone leaves no room in the window."""
        fixed = self.fixed_tokens()
        question = message_tokens(self.queue[self._turn_start]) if self._turn_start < len(self.queue) else 0
        if fixed + question + MIN_KEPT_CHARS // 4 > self.budget():
            raise ContextError(
                f"the fixed part of the prompt (system instructions, core memory, summary and function schemas, "
                f"about {fixed:,} tokens) and the question (about {question:,}) do not fit a context window of "
                f"{self.context_window:,} tokens, which must also hold the reply: use a model or server with a "
                "larger window and raise --context-window, or ask a shorter question")

    def pressure_alert(self) -> str | None:
        """At the warning count, once per flush: the text of a system alert so the model can save what matters."""
        used = self.tokens()
        if self.warned or used < WARNING_FRACTION * self.budget():
            return None
        self.warned = True
        percent = math.floor(100 * used / self.context_window)
        return (f"[system alert] Memory pressure: the prompt is at {percent}% of the context window. Soon the oldest "
                "messages will be evicted to recall storage behind a summary. Save anything you still need with "
                "core_memory_append or archival_memory_insert now.")

    def needs_flush(self) -> bool:
        return self.tokens() >= self.budget()

    # -- eviction ---------------------------------------------------------------------------------
    def flush(self, summarize: Summarize) -> int:
        """Evict down to about half the window; return how many messages were evicted.

        Units go oldest first: whole earlier turns, then call/result pairs of the current turn. The current
        question and the results the model has not seen stay; if they alone are too big, the unseen results
        are cut to fit, with a note saying how to get the rest.
        """
        target = TARGET_FRACTION * self.context_window
        used = self.fixed_tokens() + sum(message_tokens(m) for m in self.queue)
        evict: set[int] = set()
        for unit in self._evictable_units():
            if used <= target:
                break
            evict.update(unit)
            used -= sum(message_tokens(self.queue[i]) for i in unit)
        evicted = [m for i, m in enumerate(self.queue) if i in evict]
        if evicted:
            kept = [i for i in range(len(self.queue)) if i not in evict]
            self._turn_start = kept.index(self._turn_start) if self._turn_start in kept else 0
            self._seen = sum(1 for i in kept if i < self._seen)
            self.queue = [self.queue[i] for i in kept]
            self.evicted_total += len(evicted)
            self.summary = summarize(self.summary, [{k: v for k, v in m.items() if k != NUDGE} for m in evicted])
        self._reported = None
        self.warned = False
        self._cut_unseen_results()
        return len(evicted)

    def _evictable_units(self) -> list[list[int]]:
        """Index groups that may go, oldest first: each earlier turn whole, then the current turn's
        call/result pairs (an assistant message and what follows it up to the next assistant message),
        but not the pair whose results the model has not seen yet."""
        units: list[list[int]] = []
        turn: list[int] = []
        for i in range(self._turn_start):
            if self.queue[i]["role"] == "user" and not self.queue[i].get(NUDGE) and turn:
                units.append(turn)
                turn = []
            turn.append(i)
        if turn:
            units.append(turn)
        pair: list[int] = []
        for i in range(self._turn_start + 1, len(self.queue)):
            if self.queue[i]["role"] == "assistant" and pair:
                units.append(pair)
                pair = []
            pair.append(i)
        if pair:
            units.append(pair)
        return [unit for unit in units if unit[0] < self._turn_start or max(unit) < self._seen]

    def _cut_unseen_results(self) -> None:
        """Cut the newest unseen function results so that the prompt fits the budget."""
        over = self.tokens() - self.budget()
        self.cut_results = 0
        for message in reversed(self.queue[self._seen:]):
            if over <= 0:
                break
            if message["role"] != "tool":
                continue
            text = message.get("content") or ""
            keep = max(MIN_KEPT_CHARS, len(text) - 4 * over - len(CUT_NOTE) - 40)
            if keep >= len(text):
                continue
            cut = text[:keep] + CUT_NOTE.format(kept=f"{keep:,}", total=f"{len(text):,}")
            over -= estimate_tokens(text) - estimate_tokens(cut)
            message["content"] = cut
            self.cut_results += 1

    # -- persistence ------------------------------------------------------------------------------
    def save(self) -> None:
        self.sessions.save(self.session, self.core.blocks, self.summary, self.queue)

    def reload(self) -> None:
        """Take up what another process saved of this session since it was opened."""
        saved = self.sessions.load(self.session)
        if saved is not None:
            blocks, self.summary, self.queue = saved
            self.core = CoreMemory(blocks)
            self._reported, self._seen, self._turn_start = None, 0, 0

    @classmethod
    def open(cls, system: str, session: str, sessions: SessionStore, context_window: int) -> MainContext:
        saved = sessions.load(session)
        if saved is None:
            return cls(system, CoreMemory(), session, sessions, context_window)
        blocks, summary, queue = saved
        return cls(system, CoreMemory(blocks), session, sessions, context_window, summary, upgraded(queue))


LEGACY_NUDGES = ("[system heartbeat]", "[system] You replied", "[system alert]")


def upgraded(queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A queue saved by docqa 0.1 in today's shape: its reminders were user messages of their own (after a
    function result, two user turns in a row for some templates) and a reply's calls shared one message."""
    out: list[dict[str, Any]] = []
    for message in queue:
        content = message.get("content") or ""
        if message["role"] == "user" and content.startswith(LEGACY_NUDGES) and out and out[-1]["role"] == "tool":
            out[-1] = {**out[-1], "content": f"{out[-1].get('content') or ''}\n\n{content}"}
            continue
        calls = message.get("tool_calls") or []
        if message["role"] == "assistant" and len(calls) > 1:
            out += [{**message, "content": content if n == 0 else "", "tool_calls": [call]}
                    for n, call in enumerate(calls)]
            continue
        out.append(message)
    return _pair_results(out)


def _pair_results(queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put each function result right after the assistant message that made its call."""
    results = {m.get("tool_call_id"): m for m in queue if m["role"] == "tool"}
    out: list[dict[str, Any]] = []
    for message in queue:
        if message["role"] == "tool":
            continue
        out.append(message)
        for call in message.get("tool_calls") or []:
            if call.get("id") in results:
                out.append(results.pop(call["id"]))
    return out
