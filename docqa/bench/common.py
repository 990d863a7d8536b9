"""What both evaluations share: the resumable results log, an embedding cache, scoring and the LLM client
(their tables and figures are in report.py)."""

from __future__ import annotations

import json
import math
import os
import re
import string
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from docqa.embeddings.transformer import Embedder
from docqa.errors import DocqaError
from docqa.settings import Settings

MODES = ("agent", "baseline", "ceiling")
# After this many LLM failures in a row with no success, the endpoint is broken, not the sample.
MAX_FAILURES_IN_A_ROW = 3


class BenchError(DocqaError):
    """A benchmark cannot run as asked; str() says what to do."""


# -- the results log ----------------------------------------------------------------------------------
class ResultsLog:
    """An append-only JSONL file of result rows, one per finished unit of work, read back on re-runs.

    A row's key is the tuple of its `key_fields`; the last row written for a key wins, so a retried
    sample simply appends. Rows with status "error" do not count as finished: a re-run retries them.
    """

    def __init__(self, path: Path, key_fields: Sequence[str]) -> None:
        self.path = path
        self.key_fields = tuple(key_fields)
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line torn by an interrupted run: that unit simply runs again
                    if isinstance(row, dict):
                        self.rows[self.key(row)] = row

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(name) for name in self.key_fields)

    def finished(self, key: tuple[Any, ...]) -> bool:
        row = self.rows.get(key)
        return row is not None and row.get("status") != "error"

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size and not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as handle:
            if torn:
                handle.write("\n")  # never glue a new row onto a half-written one
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
        self.rows[self.key(row)] = row

    def select(self, keys: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """The rows of this run's plan, in plan order (rows of other runs in the same file are left out)."""
        return [self.rows[k] for k in keys if k in self.rows]


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def write_json(path: Path, payload: Any) -> None:
    """Write atomically, so an interrupted run never leaves a half-written summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


class FailureGuard:
    """Stops a run after MAX_FAILURES_IN_A_ROW samples in a row failed at the endpoint, at any point of the run.

    Each failed sample is one failed request of the bench (after the client's own retries of transient
    faults): a dead server, a wrong URL or key, or a server that errors on everything. The run then stops,
    writes its summary and exits non-zero; finished samples are kept and a re-run retries the failed ones.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.in_a_row = 0
        self.stopped: str | None = None  # why the run stopped early, once it has

    def record(self, status: str, error: str | None) -> bool:
        """Count one finished sample; True when the run must stop now."""
        if status != "error":
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.stopped = (f"stopped after {self.in_a_row} failed requests in a row ({error}); check --model, "
                            f"--base-url and --api-key, then run the same command again: finished samples are kept "
                            f"in {self.log_path}")
            return True
        return False


def failure_reason(summary: dict[str, Any]) -> str | None:
    """The one line a bench prints on stderr before exiting 1: it stopped early, or some samples errored.

    Errors are endpoint failures (the LLM did not answer), never wrong answers; they are counted apart
    in the table and summary.json, and a re-run of the same command retries exactly those samples.
    """
    if summary.get("stopped"):
        return str(summary["stopped"])
    errors = int(summary.get("errors") or 0)
    if errors:
        first = summary.get("first_error") or "see results.jsonl"
        return (f"{errors} of {summary.get('n', '?')} samples failed at the LLM endpoint (first: {first}); they "
                f"count as errors, not as wrong answers: run the same command again to retry them")
    return None


def fit_window(settings: Settings) -> tuple[Settings, str | None]:
    """`settings` with the context window capped by what the LLM server says it runs (with --base-url).

    The baseline prompt is cut to this window, so a server that runs 8,192 tokens gets a prompt that fits
    even when --context-window was left at a larger default. Returns the note to show, if any.
    """
    if not settings.base_url:
        return settings, None
    from docqa.agent.server_info import probe_server

    info = probe_server(settings.base_url, settings.model, settings.api_key, timeout=min(5.0, settings.llm_timeout))
    if info.context_window and info.context_window < settings.context_window:
        note = (f"context window: {info.context_window:,} tokens, from the server ({info.window_source}); "
                f"--context-window is {settings.context_window:,}")
        return settings.with_(context_window=info.context_window), note
    return settings, None


# -- embeddings -------------------------------------------------------------------------------------
class CachedEmbedder(Embedder):
    """The store's embedder plus a memory of vectors.

    The bench ingests through the real pipeline, which embeds file by file; priming this cache with all
    texts first embeds them in large batches (several times faster on a CPU), and texts shared by many
    stores (the 140 base pairs of every nested-KV sample) are embedded once.
    """

    def __init__(self, base: Embedder) -> None:
        super().__init__(base.name, base._model, base.backend)  # same model object: no second load
        self._vectors: dict[str, np.ndarray] = {}

    def prime(self, texts: Iterable[str], batch_size: int = 64, progress: bool = False) -> None:
        from tqdm import tqdm

        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        step = batch_size * 4
        with tqdm(total=len(missing), desc="embedding", unit="text", disable=not progress or not missing,
                  file=sys.stderr, leave=False) as bar:
            for start in range(0, len(missing), step):
                part = missing[start : start + step]
                for text, vector in zip(part, super().embed(part, batch_size), strict=True):
                    self._vectors[text] = vector
                bar.update(len(part))

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for text, vector in zip(missing, super().embed(missing, batch_size), strict=True):
                self._vectors[text] = vector
        if not texts:
            return super().embed(texts)
        return np.stack([self._vectors[t] for t in texts])


def prune(store: Any, keep: set[str]) -> int:
    """Delete documents other than `keep` (e.g. notes an agent inserted), so runs never see each other's."""
    extra = [doc.source for doc in store.documents() if doc.source not in keep]
    if extra:
        with store.writing():
            for source in extra:
                store.delete_document(source)
    return len(extra)


def chunk_texts(text: str, settings: Settings, tokenizer: Any) -> list[str]:
    """The chunk texts the ingestion pipeline will cut from a text file holding `text`."""
    from docqa.chunking import chunk_pages
    from docqa.readers import Page

    pages = [Page(n, page) for n, page in enumerate(text.split("\f"), start=1)]
    return [c.text for c in chunk_pages(pages, tokenizer, settings.chunk_tokens, settings.overlap_tokens)]


def embedding_fingerprint(settings: Settings) -> str:
    """Names bench collections, so a different embedding or chunking builds a new store instead of failing."""
    import hashlib

    key = f"{settings.embedding_backend}:{settings.embedding_model}:{settings.chunk_tokens}:{settings.overlap_tokens}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


# -- scoring ----------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD normalisation as in lost-in-the-middle's metrics: lowercase, no punctuation or articles."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def best_subspan_em(prediction: str, ground_truths: Sequence[str]) -> bool:
    """lost-in-the-middle's metric: some normalised gold answer occurs inside the normalised prediction."""
    normalized = normalize_answer(prediction)
    return any(normalize_answer(truth) in normalized for truth in ground_truths)


SCORINGS = ("substring", "strict")
SCORING_HELP = ("substring (the papers' rule, lost-in-the-middle's best_subspan_em: the expected answer occurs "
                "anywhere in the reply, so a reply that lists many candidates counts) or strict (the reply's answer "
                "is the expected value alone, ignoring case and punctuation). Both are always recorded; this picks "
                "the headline accuracy.")


def strict_value(answer: str, expected: str) -> bool:
    """Nested KV's strict rule: the reply is the expected value alone, ignoring case, punctuation and spaces."""
    def bare(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch not in _PUNCTUATION and not ch.isspace())

    return bool(expected) and bare(answer) == bare(expected)


_ANSWER_FIELD = re.compile(r"ANSWER\s*:\s*(.*?)(?:,?\s*DOCUMENT\s*:|$)", re.IGNORECASE | re.DOTALL)


def answer_field(reply: str) -> str:
    """The answer a doc-QA reply gives: its ANSWER field in the paper's 'ANSWER: ..., DOCUMENT: ...' format,
    else its first line (lost-in-the-middle's prompt asks for the answer alone)."""
    match = _ANSWER_FIELD.search(reply)
    if match:
        return match.group(1).strip()
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def exact_match(reply: str, ground_truths: Sequence[str]) -> bool:
    """Doc-QA's strict rule: the normalised answer field equals some normalised gold answer (SQuAD EM)."""
    answer = normalize_answer(answer_field(reply))
    return bool(answer) and any(answer == normalize_answer(truth) for truth in ground_truths)


def contains_words(text: str, answers: Sequence[str]) -> bool:
    """Some normalised answer occurs in the normalised text as whole words ("one" is not in "none")."""
    padded = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in padded for a in answers if normalize_answer(a))


# The paper's judge prompt, verbatim from MemGPT paper_experiments/doc_qa_task/llm_judge_doc_qa.py.
EVAL_PROMPT = """
    Your task is to evaluate whether an LLM correct answered a question.
    The LLM response should be the format 'ANSWER: <answer>, DOCUMENT: <document_text>' or say 'INSUFFICIENT INFORMATION'.
    The true answer is provided in the format 'TRUE ANSWER: <list of possible answers>'.
    The questions is provided in the format 'QUESTION: <question>'.
    If the LLM response contains both the correct answer and corresponding document text, the response is correct.
    Even if the LLM's answer and the true answer are slightly different in wording, the response is still correct.
    For example, if the answer is more specific than the true answer or uses a different phrasing that is still correct, the response is correct.
    If the LLM response if 'INSUFFICIENT INFORMATION', or the 'DOCUMENT' field is missing, the response is incorrect.
    Respond with a single token: 'CORRECT' or 'INCORRECT'.
    """  # noqa: E501 (verbatim)
INSUFFICIENT = "INSUFFICIENT INFORMATION"


def judge_prompt(question: str, answers: list[str], response: str) -> str:
    """The judge's input, assembled as the paper's script did (answers as a Python list)."""
    output = f"QUESTION: {question}\nTRUE ANSWER: {answers!s}\n{response}"
    return f"{EVAL_PROMPT}\n\n\n{output}\n\n"  # "\n".join([EVAL_PROMPT, "\n", output, "\n"])


def judge(client: Any, question: str, answers: list[str], response: str) -> bool:
    """The paper's LLM judge, read as the paper read it: INCORRECT wins, then CORRECT, else wrong."""
    reply = client.complete([{"role": "user", "content": judge_prompt(question, answers, response)}])
    verdict = reply.content or ""
    return "INCORRECT" not in verdict and "CORRECT" in verdict


def score(row: dict[str, Any], answers: list[str], judge_client: Any | None, judge_model: str | None) -> bool:
    """String match first (lost-in-the-middle's best_subspan_em); the judge decides what it cannot.

    `correct` is the paper's verdict (substring, then judge); `strict` is normalised exact match of the
    reply's answer field, which no judge overrides. Returns whether the row changed (a new verdict was added)."""
    if row.get("status") == "error":
        row.update(correct=False, judged_by=None, strict=False)
        return False
    answer = row.get("answer") or ""
    row["em"] = best_subspan_em(answer, answers)
    row["strict"] = exact_match(answer, answers)
    if row["em"] or INSUFFICIENT in answer or not answer.strip():
        row.update(correct=row["em"], judged_by="match")
        return False
    if row.get("judged_by") == "llm" and judge_model in (None, row.get("judge_model")):
        return False  # keep an earlier verdict unless another judge is asked for
    if judge_client is None:
        row.update(correct=False, judged_by=None)  # undecided: counted wrong, reported apart
        return False
    from docqa.agent.replies import LLMError

    try:
        verdict = judge(judge_client, row["question"], answers, answer)
    except LLMError as exc:
        row.update(correct=False, judged_by=None, judge_error=str(exc))  # a re-run asks the judge again
        return False
    row.pop("judge_error", None)
    row.update(correct=verdict, judged_by="llm", judge_model=judge_model)
    return True


# -- the LLM ----------------------------------------------------------------------------------------
def make_client(settings: Settings, model: str | None = None, purpose: str = "this mode") -> Any:
    """The chat client for `settings` (or for `model` on the same endpoint), with a clear error if none."""
    from docqa.agent.llm import ChatClient

    name = model or settings.model
    if not name:
        raise BenchError(f"{purpose} needs an LLM: pass --model (and --base-url for a local OpenAI-compatible "
                         "server), or set DOCQA_MODEL; --mode ceiling needs none")
    # No silent retries: a failed sample is one failed request, so "3 in a row" stops the run after 3 requests,
    # and a re-run retries the samples that errored.
    return ChatClient(name, base_url=settings.base_url, api_key=settings.api_key, mode=settings.llm_mode,
                      timeout=settings.llm_timeout, fold_system=settings.fold_system, max_retries=0)


def estimate_uuid_tokens(text: str) -> int:
    """An upper bound on the tokens of ASCII text dense with UUIDs: one per character.

    BPE tokenizers split hex UUIDs almost character by character: llama.cpp counted the 140-pair nested-KV
    prompt (11,696 characters) as about 11,800 tokens, where the four-characters-a-token estimate says 2,924.
    A token is at least one byte, so the character count bounds the prompt's tokens (its chat template's few
    tokens are covered by the answer reserve)."""
    return len(text.encode("utf-8"))


def estimate_tokens(text: str) -> int:
    """The token estimate the agent's memory manager uses, so the baseline is cut by the same measure."""
    try:
        from docqa.agent.replies import estimate_tokens as estimate
    except ImportError:
        return math.ceil(len(text) / 4)
    return int(estimate(text))


def truncate_tokens(text: str, budget: int) -> str:
    """The longest prefix of `text` within `budget` estimated tokens."""
    if budget <= 0:
        return ""
    if estimate_tokens(text) <= budget:
        return text
    cut = int(len(text) * budget / max(estimate_tokens(text), 1))
    while cut > 0 and estimate_tokens(text[:cut]) > budget:
        cut = int(cut * 0.9)
    return text[:cut]


def usage_fields(prompt_tokens: int, completion_tokens: int, llm_calls: int) -> dict[str, int]:
    return {"llm_calls": llm_calls, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "tokens": prompt_tokens + completion_tokens}


def brief_steps(steps: list[dict[str, Any]], limit: int = 400) -> list[dict[str, Any]]:
    """The agent's function calls for the log, results shortened: enough to see where a run went wrong."""
    return [{"function": s.get("function"), "arguments": s.get("arguments"),
             "result": str(s.get("result", ""))[:limit]} for s in steps]


def use_persona(agent: Any, persona: str, human: str) -> None:
    """Give the agent the paper's persona and human blocks, as the paper's agents had (when it has them)."""
    core = getattr(getattr(agent, "context", None), "core", None)
    blocks = getattr(core, "blocks", None)
    if isinstance(blocks, dict):
        blocks["persona"], blocks["human"] = persona, human


def count_searches(steps: list[dict[str, Any]]) -> int:
    return sum(1 for s in steps if s.get("function") == "archival_memory_search")
