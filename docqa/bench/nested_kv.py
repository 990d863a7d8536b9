"""Nested key-value retrieval, the paper's Figure 7: follow a chain of UUID keys through archival memory.

Samples are built exactly as the paper's code built them (MemGPT `paper_experiments/nested_kv_task`):
140 UUID pairs from lost-in-the-middle; an orderings file line with N indices makes the key at index[0]
the query and overwrites the value of key index[i] with the key at index[i+1], so the answer takes N
lookups (nesting level N-1). Archival memory holds one passage per pair.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from docqa.bench.common import (
    BenchError,
    CachedEmbedder,
    FailureGuard,
    ResultsLog,
    brief_steps,
    chunk_texts,
    count_searches,
    embedding_fingerprint,
    fit_window,
    make_client,
    prune,
    strict_value,
    usage_fields,
    use_persona,
    write_json,
)
from docqa.bench.configs import NestedKVConfig
from docqa.bench.nested_kv_data import (
    NESTED_HUMAN,
    NESTED_PERSONA,
    Sample,
    agent_prompt,
    baseline_prompt,
    fit_pairs,
    gold_pairs,
    load_samples,
    passage,
)
from docqa.bench.report import plot_nested_kv, summarize_nested_kv
from docqa.settings import Settings


# -- the store ------------------------------------------------------------------------------------
class SampleStore:
    """One collection that holds, in turn, each sample's 140 pairs, one text file per pair.

    Samples differ from the shared 140 base pairs in at most 5 values, and ingestion is idempotent per
    file, so loading the next sample re-ingests only the few pair files whose text changed: about 10
    files instead of 140. The real pipeline does all writes. One run at a time may use the collection.
    """

    def __init__(self, settings: Settings, mode: str, embedder: CachedEmbedder) -> None:
        from docqa.archive.store import ArchivalStore

        collection = f"kv-{embedding_fingerprint(settings)}-{mode}"
        self.directory = settings.store_dir / "documents" / collection  # the sources the store names
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(settings.store_dir / f"{collection}.bench.lock", "w")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BenchError(f"another nested-kv {mode} run is using the store in {settings.store_dir}; wait for "
                             "it, or pass another --out or --store") from None
        self.embedder = embedder
        self.store = ArchivalStore(settings.with_(collection=collection), embedder=embedder)

    def load(self, sample: Sample) -> Any:
        """The store holding exactly this sample's pairs."""
        from docqa.ingest.files import source_of
        from docqa.ingest.pipeline import Ingestor

        changed, sources = [], set()
        for number, (key, value) in enumerate(sample.pairs):
            text, path = passage(key, value), self.directory / f"pair-{number:03d}.txt"
            sources.add(source_of(path))
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                changed.append(text)
        tokenizer = self.embedder.tokenizer
        self.embedder.prime(t for text in changed for t in chunk_texts(text, self.store.settings, tokenizer))
        prune(self.store, sources)
        report = Ingestor(self.store, progress=False, notice=lambda message: None).run([self.directory])
        if report.files_failed:
            failure = report.files_failed[0]
            raise BenchError(f"could not load level {sample.level} sample {sample.index} into the store: "
                             f"{failure.path}: {failure.error}")
        return self.store

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self.store.catalog, "close", None)
        if close is not None:
            close()
        self._lock.close()  # releases the flock


# -- the three modes --------------------------------------------------------------------------------
@dataclass
class Outcome:
    answer: str
    status: str
    searches: int = 0
    steps: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def solve_by_search(store: Any, query_key: str, max_lookups: int = 64) -> Outcome:
    """The ceiling: follow the chain with nothing but archival_memory_search pages, no LLM.

    For each key, read pages until a passage says `key = <current>,`; when no page of the whole ranking
    does, the current UUID is the answer. `searches_stop_rule` counts what the paper's agent needed
    instead: it stops as soon as a page shows the UUID only as a value.
    """
    current, searches, stop_rule = query_key, 0, 0
    key_pages: list[int] = []  # the page each key was found on
    for _ in range(max_lookups):
        needle = f"key = {current},"
        page, value = 0, None
        only_as_value_first = False
        while True:
            result = store.search(current, page=page)
            searches += 1
            texts = [hit.record.text for hit in result.hits]
            if page == 0:
                only_as_value_first = (any(f"value = {current}" in t for t in texts)
                                       and not any(needle in t for t in texts))
            match = next((re.search(re.escape(needle) + r" value = ([\w-]+)", t) for t in texts if needle in t), None)
            if match:
                value = match.group(1)
                break
            if page + 1 >= result.num_pages:
                break
            page += 1
        if value is None:
            stop_rule += 1 if only_as_value_first else page + 1
            return Outcome(current, "answered", searches=searches, steps=searches,
                           extra={"searches_stop_rule": stop_rule, "key_pages": key_pages})
        stop_rule += page + 1
        key_pages.append(page)
        current = value
    return Outcome(current, "step_limit", searches=searches, steps=searches,
                   error=f"no end after {max_lookups} lookups (a cycle?)")


def run_agent(sample: Sample, store: Any, settings: Settings, client: Any) -> Outcome:
    from docqa.agent.loop import Agent

    agent = Agent(settings, store, client)
    use_persona(agent, NESTED_PERSONA, NESTED_HUMAN)
    result = agent.ask(agent_prompt(sample.query_key))
    return Outcome(result.answer, result.status, searches=count_searches(result.steps), steps=len(result.steps),
                   llm_calls=result.llm_calls, prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens, error=result.error,
                   extra={"trace": brief_steps(result.steps)})


def run_baseline(sample: Sample, client: Any, context_window: int) -> Outcome:
    """One fixed-context prompt with the pairs that fit the window (`fit_pairs`), and whether the chain's pairs
    all survived the cut. A server that refuses the prompt as too long and names a smaller window gets it
    cut to that window, once."""
    from docqa.agent.replies import LLMError, PromptTooLong

    window, calls = context_window, 0
    while True:
        kept = fit_pairs(sample.query_key, sample.pairs, window)
        present = set(kept)
        survival = {"context_window": window, "pairs_kept": len(kept), "pairs_total": len(sample.pairs),
                    "gold_pairs_kept": sum(1 for pair in gold_pairs(sample) if pair in present)}
        survival["gold_survived"] = survival["gold_pairs_kept"] == len(sample.chain)
        calls += 1
        try:
            reply = client.complete([{"role": "user", "content": baseline_prompt(sample.query_key, kept)}])
        except PromptTooLong as exc:
            if exc.server_window and exc.server_window < window and calls == 1:
                window = exc.server_window
                continue
            return Outcome("", "error", llm_calls=calls, error=str(exc), extra=survival)
        except LLMError as exc:
            return Outcome("", "error", llm_calls=calls, error=str(exc), extra=survival)
        return Outcome(reply.content or "", "answered", llm_calls=calls, prompt_tokens=reply.prompt_tokens,
                       completion_tokens=reply.completion_tokens, extra=survival)


# -- the run ----------------------------------------------------------------------------------------
KEY_FIELDS = ("mode", "model", "level", "sample", "window")


def run(config: NestedKVConfig) -> dict[str, Any]:
    """Run every planned sample not already finished in out/results.jsonl; write summary and figure."""
    from tqdm import tqdm

    settings = config.settings
    model = settings.model if config.mode != "ceiling" else None
    samples = load_samples(config.data_dir, config.levels, config.samples)
    window = None  # only the baseline's prompt depends on the window: another window is another run
    if config.mode == "baseline":
        settings, note = fit_window(settings)
        window = settings.context_window
        if note:
            print(f"docqa: note: {note}", file=sys.stderr)
    log = ResultsLog(config.out / "results.jsonl", KEY_FIELDS)
    keys = [(config.mode, model, s.level, s.index, window) for s in samples]
    todo = [s for s, key in zip(samples, keys, strict=True) if not log.finished(key)]
    client = make_client(settings, purpose=f"--mode {config.mode}") if config.mode != "ceiling" and todo else None
    guard = FailureGuard(log.path)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"nested-kv {config.mode}",
               unit="sample", disable=not config.progress, file=sys.stderr)
    with bar, contextlib.ExitStack() as stack:
        stores = None
        if config.mode != "baseline" and todo:
            stores = stack.enter_context(SampleStore(settings, config.mode, _embedder(settings)))
        for sample in todo:
            if stores is None:
                started = time.perf_counter()
                outcome = run_baseline(sample, client, settings.context_window)
            else:
                store = stores.load(sample)
                started = time.perf_counter()  # time the task, not the store update
                if config.mode == "ceiling":
                    outcome = solve_by_search(store, sample.query_key)
                else:
                    outcome = run_agent(sample, store, store.settings, client)
            row = _row(config.mode, model, sample, outcome, time.perf_counter() - started, config.scoring)
            log.append({**row, "window": window} if window else row)
            bar.update(1)
            if config.mode != "ceiling" and guard.record(outcome.status, outcome.error):
                break
    summary = summarize_nested_kv(log.select(keys), config, model, settings.context_window)
    summary["stopped"] = guard.stopped
    write_json(config.out / "summary.json", summary)
    plot_nested_kv(config.out, summary)
    return summary


def _embedder(settings: Settings) -> CachedEmbedder:
    from docqa.embeddings.load import load_embedder

    return CachedEmbedder(load_embedder(settings.embedding_model, settings.embedding_backend))


def _row(mode: str, model: str | None, sample: Sample, outcome: Outcome, seconds: float,
         scoring: str = "substring") -> dict[str, Any]:
    substring = outcome.status != "error" and sample.expected in outcome.answer
    strict = outcome.status != "error" and strict_value(outcome.answer, sample.expected)
    row: dict[str, Any] = {
        "bench": "nested-kv", "mode": mode, "model": model, "level": sample.level, "sample": sample.index,
        "lookups": sample.level + 1, "query_key": sample.query_key, "expected": sample.expected,
        "answer": outcome.answer, "correct": strict if scoring == "strict" else substring,
        "correct_substring": substring, "correct_strict": strict, "status": outcome.status,
        "steps": outcome.steps, "searches": outcome.searches,
        **usage_fields(outcome.prompt_tokens, outcome.completion_tokens, outcome.llm_calls),
        "seconds": round(seconds, 3), "error": outcome.error,
    }
    row.update(outcome.extra)
    return row
