"""Multi-document QA, the paper's Figure 5: NaturalQuestions-Open over a passage corpus in archival memory.

The corpus is every passage of every question in a lost-in-the-middle QA file (title + text, duplicates
dropped), ingested with the real pipeline, one text file per passage so each search hit names its passage.
`ceiling` measures the retriever (recall of the gold passage at each K); `baseline` puts the top K passages
in one prompt, cut to fit the context window as the paper did; `agent` lets the docqa agent page through
archival memory. Prompts are the paper's (MemGPT `paper_experiments/doc_qa_task`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from docqa.bench.common import (
    BenchError,
    CachedEmbedder,
    FailureGuard,
    ResultsLog,
    best_subspan_em,
    brief_steps,
    chunk_texts,
    contains_words,
    count_searches,
    embedding_fingerprint,
    estimate_tokens,
    fit_window,
    make_client,
    prune,
    score,
    truncate_tokens,
    usage_fields,
    use_persona,
    write_json,
)
from docqa.bench.configs import DocQAConfig
from docqa.bench.doc_qa_data import Dataset, Passage, Question, load_dataset, sample_questions, split_of
from docqa.bench.report import plot_doc_qa, summarize_doc_qa
from docqa.settings import Settings

ANSWER_RESERVE = 1000  # tokens the paper's baseline kept free for the answer (its "padding")

# The paper's texts, verbatim from MemGPT paper_experiments/doc_qa_task/doc_qa.py (the judge is in common.py).
DOC_QA_PERSONA = (
    "You are MemGPT DOC-QA bot. Your job is to answer questions about documents that are stored in your archival "
    "memory. The answer to the users question will ALWAYS be in your archival memory, so remember to keep searching "
    "if you can't find the answer. Answer the questions as if though the year is 2018."
)
DOC_QA_HUMAN = "The user will ask you questions about documents. Answer them to the best of your ability."
BASELINE_PROMPT = (
    "Answer the question provided according to the list of documents below (some of which might be irrelevant. "
    + "In your response, provide both the answer and the document text from which you determined the answer. "
    + "Format your response with the format 'ANSWER: <YOUR ANSWER>, DOCUMENT: <DOCUMENT TEXT>'. "
    + "If none of the documents provided have the answer to the question, reply with 'INSUFFICIENT INFORMATION'. "
    + "Do NOT provide an answer if you cannot find it in the provided documents. "
    + "Your response will only be considered correct if you provide both the answer and relevant document text, "
    + "or say 'INSUFFICIENT INFORMATION'."
    + "Answer the question as if though the current year is 2018."
)
MEMGPT_PROMPT = (
    "Search your archival memory to answer the provided question. "
    + "Provide both the answer and the archival memory result from which you determined your answer. "
    + "Format your response with the format 'ANSWER: <YOUR ANSWER>, DOCUMENT: <ARCHIVAL MEMORY TEXT>. "
    + "Your task is to answer the question: "
)
# lost-in-the-middle's qa.prompt, for --prompt litm.
LITM_PROMPT = ("Write a high-quality answer for the given question using only the provided search results "
               "(some of which might be irrelevant).\n\n{search_results}\n\nQuestion: {question}\nAnswer:")



# -- the corpus store -------------------------------------------------------------------------------
def corpus_store(dataset: Dataset, settings: Settings, embedder: CachedEmbedder, progress: bool) -> Any:
    """The corpus in archival memory, through the same pipeline as `docqa ingest`; re-runs reuse it."""
    from docqa.archive.store import ArchivalStore
    from docqa.ingest.pipeline import Ingestor

    collection = collection_name(dataset, settings)
    directory = settings.store_dir / "documents" / collection  # with the store: sources are these paths
    directory.mkdir(parents=True, exist_ok=True)
    store = ArchivalStore(settings.with_(collection=collection), embedder=embedder)
    present = {Path(doc.source).name for doc in store.documents()}
    missing = []
    for item in dataset.passages:
        path = directory / passage_file(item.id)
        if not path.exists() or path.read_text(encoding="utf-8") != item.content:
            path.write_text(item.content, encoding="utf-8")
            missing.append(item)
        elif path.name not in present:
            missing.append(item)
    if missing:
        # Embedding in large batches first is several times faster than the pipeline's file-by-file calls.
        embedder.prime((t for item in missing for t in chunk_texts(item.content, settings, embedder.tokenizer)),
                       progress=progress)
        notes: list[str] = []
        report = Ingestor(store, progress=progress, notice=notes.append).run([directory])
        if report.files_failed:
            failure = report.files_failed[0]
            raise BenchError(f"could not ingest the corpus: {failure.path}: {failure.error}")
    return store


def collection_name(dataset: Dataset, settings: Settings) -> str:
    """One collection per corpus and embedding, so another --data file never mixes into this one."""
    return f"nq-{dataset.fingerprint}-{embedding_fingerprint(settings)}"


def passage_file(passage_id: int) -> str:
    return f"p{passage_id:06d}.txt"


def passage_of(source: str) -> int | None:
    name = Path(source).name
    return int(name[1:7]) if name.startswith("p") and name[1:7].isdigit() else None


def passage_ranking(store: Any, question: str, mode: str = "hybrid") -> list[int]:
    """Passage ids best first: the store's whole ranking (all pages), chunks of one passage counted once."""
    depth = store.settings.search_depth
    hits = store.search(question, page=0, page_size=depth, mode=mode).hits
    ids = [passage_of(hit.record.source) for hit in hits]
    return list(dict.fromkeys(i for i in ids if i is not None))


def gold_rank(ranking: list[int], gold: list[int]) -> int | None:
    """1-based rank of the first gold passage, None when no page of the ranking has it."""
    wanted = set(gold)
    return next((n for n, pid in enumerate(ranking, start=1) if pid in wanted), None)


# -- prompts ----------------------------------------------------------------------------------------
def cut_documents(question: str, documents: list[Passage], context_window: int, style: str = "paper") -> list[str]:
    """The top documents as the baseline prompt holds them, each cut to an equal share of the window.

    As in the paper's baseline, every document gets (window - prompt - answer reserve) / K tokens, so the
    more documents, the less of each survives. (The paper's code measured that share in tokens but cut
    characters, about four times harder; this cuts tokens, so the prompt just fits.)
    """
    if style == "litm":
        frame = LITM_PROMPT.format(search_results="", question=question)
    else:
        frame = "\n".join([BASELINE_PROMPT, "\n", "", "\n", f"Question: {question}"])
    share = (context_window - estimate_tokens(frame) - ANSWER_RESERVE) // max(len(documents), 1)
    if style == "litm":
        return [truncate_tokens(f"Document [{n}](Title: {d.title}) {d.text}", share)
                for n, d in enumerate(documents, start=1)]
    return [truncate_tokens(f"Document [{n}]: {d.content} \n", share) for n, d in enumerate(documents, start=1)]


def assemble_prompt(question: str, cut: list[str], style: str = "paper") -> str:
    if style == "litm":
        return LITM_PROMPT.format(search_results="\n".join(cut), question=question)
    return "\n".join([BASELINE_PROMPT, "\n", "".join(cut), "\n", f"Question: {question}"])


def baseline_prompt(question: str, documents: list[Passage], context_window: int, style: str = "paper") -> str:
    """The fixed-context prompt with the top documents, each cut to an equal share of the window."""
    return assemble_prompt(question, cut_documents(question, documents, context_window, style), style)


def survival(question: Question, documents: list[Passage], cut: list[str], prompt: str) -> dict[str, bool]:
    """What of the gold passage the cut prompt still holds.

    - gold_retrieved: a gold passage is among the documents (before any cut);
    - gold_intact: a gold passage is in the prompt whole;
    - gold_kept: a gold passage survives whole, or its answer-bearing span does: some answer occurs, as whole
      words, in the part of the gold passage the cut kept (only answers the whole gold passage holds count);
    - answer_substring_in_prompt: the old, loose figure: an answer string occurs anywhere in the prompt
      without its question, frame and distractors included ("20" in "2018", "one" in "none").
    """
    gold = set(question.gold)
    retrieved = intact = survived = False
    for document, kept in zip(documents, cut, strict=True):
        if document.id not in gold:
            continue
        retrieved = True
        whole = document.content in kept
        answers = [a for a in question.answers if contains_words(document.content, [a])]
        intact = intact or whole
        survived = survived or whole or contains_words(kept, answers)
    return {"gold_retrieved": retrieved, "gold_intact": intact, "gold_kept": survived,
            "answer_substring_in_prompt": bool(documents)
            and best_subspan_em(prompt.replace(question.question, ""), question.answers)}


def agent_prompt(question: str) -> str:
    return " ".join([MEMGPT_PROMPT, f"{question}?"])


# -- the run ----------------------------------------------------------------------------------------
KEY_FIELDS = ("mode", "model", "k", "qid", "store", "window")


def run(config: DocQAConfig) -> dict[str, Any]:
    """Run what out/results.jsonl lacks, score, write summary.json and the figure; return the summary."""
    from tqdm import tqdm

    from docqa.embeddings.load import load_embedder

    settings = config.settings
    if max(config.ks) > settings.search_depth:
        raise BenchError(f"--k {max(config.ks)} is deeper than the store's ranking ({settings.search_depth})")
    dataset = load_dataset(config.data)
    questions = sample_questions(dataset, config.questions, config.seed, config.split)
    model = settings.model if config.mode != "ceiling" else None
    if config.mode == "baseline":
        settings, note = fit_window(settings)
        if note:
            print(f"docqa: note: {note}", file=sys.stderr)
        config.settings = settings
    window = settings.context_window if config.mode != "agent" else None  # the cut depends on it
    collection = collection_name(dataset, settings)
    ks: list[int | None] = list(config.ks) if config.mode == "baseline" else [None]
    plan = [(q, k) for q in questions for k in ks]
    keys = [(config.mode, model, k, q.index, collection, window) for q, k in plan]
    log = ResultsLog(config.out / "results.jsonl", KEY_FIELDS)
    todo = [(q, k) for (q, k), key in zip(plan, keys, strict=True) if not log.finished(key)]
    # Clients first: a missing --model should fail before minutes of ingestion, not after.
    client = make_client(settings, purpose=f"--mode {config.mode}") if config.mode != "ceiling" and todo else None
    judge_client = make_client(settings, config.judge_model) if config.judge_model else None
    embedder = CachedEmbedder(load_embedder(settings.embedding_model, settings.embedding_backend))
    store = corpus_store(dataset, settings, embedder, config.progress)
    embedder.prime({q.question for q, _ in todo})  # all query vectors in a few batches
    corpus = {doc.source for doc in store.documents() if passage_of(doc.source) is not None}
    guard = FailureGuard(log.path)
    base: dict[str, Any] = {"bench": "doc-qa", "mode": config.mode, "model": model, "store": collection,
                            "window": window}
    with tqdm(total=len(plan), initial=len(plan) - len(todo), desc=f"doc-qa {config.mode}", unit="question",
              disable=not config.progress, file=sys.stderr) as bar:
        for question, k in todo:
            started = time.perf_counter()
            row: dict[str, Any] = {**base, "k": k, "qid": question.index, "question": question.question,
                   "answers": question.answers, "gold": question.gold}
            if config.mode == "ceiling":
                row.update(_ceiling(store, question, dataset, config))
            elif config.mode == "baseline":
                row.update(_baseline(store, question, k or 1, dataset, config, client))
            else:
                prune(store, corpus)  # notes the agent inserted for an earlier question must not help this one
                row.update(_agent(store, question, store.settings, client))
            if config.mode != "ceiling":
                score(row, question.answers, judge_client, config.judge_model)
            row["seconds"] = round(time.perf_counter() - started, 3)
            log.append(row)
            bar.update(1)
            if config.mode != "ceiling" and guard.record(row["status"], row.get("error")):
                break
    rows = log.select(keys)
    if config.mode != "ceiling":
        answers = {q.index: q.answers for q in questions}
        for row in rows:  # a later --judge-model decides what earlier runs left undecided
            if score(row, answers[row["qid"]], judge_client, config.judge_model):
                log.append(row)
    summary = summarize_doc_qa(rows, config, dataset, model, collection, split_of(dataset))
    summary["stopped"] = guard.stopped
    write_json(config.out / "summary.json", summary)
    plot_doc_qa(config.out, summary)
    return summary


def _ceiling(store: Any, question: Question, dataset: Dataset, config: DocQAConfig) -> dict[str, Any]:
    hybrid = passage_ranking(store, question.question, "hybrid")
    dense = passage_ranking(store, question.question, "dense")
    cut_at: dict[str, dict[str, bool]] = {}  # what of the gold passage the baseline's cut prompt keeps, per K
    for k in config.ks:
        docs = [dataset.passages[i] for i in hybrid[:k]]
        cut = cut_documents(question.question, docs, config.settings.context_window, config.prompt_style)
        cut_at[str(k)] = survival(question, docs, cut, assemble_prompt(question.question, cut, config.prompt_style))
    return {"status": "answered", "rank_hybrid": gold_rank(hybrid, question.gold),
            "rank_dense": gold_rank(dense, question.gold), "ranked": len(hybrid), "survival": cut_at}


def _baseline(store: Any, question: Question, k: int, dataset: Dataset, config: DocQAConfig,
              client: Any) -> dict[str, Any]:
    from docqa.agent.replies import LLMError

    docs = [dataset.passages[i] for i in passage_ranking(store, question.question)[:k]]
    cut = cut_documents(question.question, docs, config.settings.context_window, config.prompt_style)
    prompt = assemble_prompt(question.question, cut, config.prompt_style)
    row: dict[str, Any] = {**survival(question, docs, cut, prompt), "prompt_tokens_estimate": estimate_tokens(prompt)}
    try:
        reply = client.complete([{"role": "user", "content": prompt}])
    except LLMError as exc:
        return {**row, "answer": "", "status": "error", "error": str(exc), **usage_fields(0, 0, 1)}
    return {**row, "answer": reply.content or "", "status": "answered", "error": None,
            **usage_fields(reply.prompt_tokens, reply.completion_tokens, 1)}


def _agent(store: Any, question: Question, settings: Settings, client: Any) -> dict[str, Any]:
    from docqa.agent.loop import Agent

    agent = Agent(settings, store, client)
    use_persona(agent, DOC_QA_PERSONA, DOC_QA_HUMAN)
    result = agent.ask(agent_prompt(question.question))
    shown = "\n".join(str(s.get("result", "")) for s in result.steps)
    return {"answer": result.answer, "status": result.status, "error": result.error,
            "searches": count_searches(result.steps), "steps": len(result.steps),
            "gold_seen": any(passage_file(g) in shown for g in question.gold),
            **usage_fields(result.prompt_tokens, result.completion_tokens, result.llm_calls),
            "trace": brief_steps(result.steps)}
