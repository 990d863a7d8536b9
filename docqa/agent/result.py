"""The result of one question to the agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AgentResult:
    """What one question came to: the answer (if any), how the turn ended, where the answer comes from, and the cost.

    `status` is "answered", "step_limit" (no answer within the step limit), "error" (`error` says why) or,
    from `docqa ask --no-llm`, "no_llm". Each citation is a dict with source, page, page_end, section, chunk
    and the passage's text (its evidence, for `docqa ask`); `steps` is the trace of calls and results.
    """

    answer: str
    status: str  # answered | step_limit | error | no_llm
    citations: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.answer, "status": self.status, "citations": self.citations, "steps": self.steps,
                "llm_calls": self.llm_calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 3),
                "error": self.error}
