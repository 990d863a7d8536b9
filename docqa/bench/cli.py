"""`docqa bench`: the paper's two document evaluations, one command each. Commands only parse options."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from docqa.bench.common import MODES, SCORING_HELP, SCORINGS
from docqa.cli.shared import friendly, llm_options, with_options

MODE_HELP = ("agent: the docqa agent pages through archival memory; baseline: one fixed-context prompt; "
             "ceiling: no LLM, what the store itself permits.")


def _ints(text: str, name: str, low: int, high: int) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, e.g. 0,1,2 (got '{text}')",
                                 param_hint=name) from None
    if not values or values[0] < low or values[-1] > high:
        raise click.BadParameter(f"values must be between {low} and {high} (got '{text}')", param_hint=name)
    return values


# docqa's LLM options that the bench needs, their help worded for its modes.
_BENCH_LLM = ["model", "base_url", "api_key", "llm_mode", "fold_system", "max_steps", "llm_timeout"]
_bench_llm_options = llm_options(_BENCH_LLM, reworded={
    "model": "Chat model for --mode agent/baseline [env DOCQA_MODEL].",
    "base_url": "OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 for a local server "
                "[env OPENAI_BASE_URL; default OpenAI].",
    "api_key": "API key [env OPENAI_API_KEY].",
    "max_steps": "Agent LLM calls per question (default 20).",
})


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What every bench command takes: the LLM, the embedder and store, and how to print the result."""
    options = [
        click.option("--embedding-backend", type=click.Choice(["torch", "static"]),
                     help="Embedder for the bench store [env DOCQA_EMBEDDING_BACKEND; default torch]."),
        click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Store for the benchmark's archival memory [default OUT/store]; share one between "
                     "modes to build it once."),
        click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of the table."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars (they are shown only on a terminal)."),
    ]
    return _bench_llm_options(with_options(command, options))


def _finish(summary: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print the result; exit 1 with a one-line reason when the run stopped early or any sample errored."""
    from docqa.bench.common import failure_reason

    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))
    reason = failure_reason(summary)
    if reason:
        click.echo(f"docqa: error: {reason}", err=True)
        sys.exit(1)


def _settings(out: Path, store_dir: Path | None = None, **flags: Any) -> Any:
    from docqa.cli.config import resolve

    flags = {k: v for k, v in flags.items() if v is not None}
    # The bench store is its own (default in --out), never the user's store or a Chroma server.
    return resolve(store_dir=store_dir or out / "store", **flags).with_(chroma_url=None)


@click.group()
def bench() -> None:
    """Reproduce the MemGPT paper's document evaluations on your own LLM.

    Each command has three modes: agent (the docqa agent pages through archival memory), baseline (one
    fixed-context prompt, as the paper's GPT baselines) and ceiling (no LLM: what the store permits).
    Results are resumable: run the same command again to finish an interrupted run.
    """


@bench.command(name="nested-kv")
@click.option("--levels", default="0,1,2,3", show_default=True,
              help="Nesting levels, comma-separated, 0-5 (level N needs N+1 lookups; the paper ran 0-4).")
@click.option("--samples", type=click.IntRange(1, 100), default=30, show_default=True,
              help="Samples per level (the paper's 30).")
@click.option("--mode", type=click.Choice(MODES), default="agent", show_default=True, help=MODE_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default bench-out/nested-kv-<mode>].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The nested_kv data (140 pairs and orderings files) [default: the data shipped in the package].")
@click.option("--context-window", type=click.IntRange(min=1024),
              help="Tokens the baseline prompt must fit in: pairs are dropped from the end until it does, the "
              "question kept; the server's own window caps it when it says one [env DOCQA_CONTEXT_WINDOW; "
              "default 8192].")
@click.option("--scoring", type=click.Choice(SCORINGS), default="substring", show_default=True, help=SCORING_HELP)
@run_options
@friendly
def nested_kv(levels: str, samples: int, mode: str, out: Path | None, data_dir: Path | None,
              context_window: int | None, scoring: str, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Nested key-value retrieval (the paper's Figure 7): 140 UUID pairs, one per archival passage.

    Writes results.jsonl, summary.json and accuracy.png (accuracy per nesting level; sibling runs in the
    same parent directory, e.g. other modes, are drawn too). Exits 1 when any sample failed at the LLM
    endpoint (summary and table are still written; a re-run retries them); stops after 3 such failures in a row.
    """
    from docqa.bench import nested_kv as task
    from docqa.bench.configs import NestedKVConfig
    from docqa.bench.nested_kv_data import DEFAULT_DATA_DIR, MAX_LEVEL
    from docqa.bench.report import render_nested_kv

    out = out or Path("bench-out") / f"nested-kv-{mode}"
    config = NestedKVConfig(levels=_ints(levels, "--levels", 0, MAX_LEVEL), samples=samples, mode=mode,
                            out=out, data_dir=data_dir or DEFAULT_DATA_DIR,
                            settings=_settings(out, context_window=context_window, **flags),
                            progress=not quiet and sys.stderr.isatty(), scoring=scoring)
    _finish(task.run(config), as_json, render_nested_kv)


@bench.command(name="doc-qa")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="A lost-in-the-middle QA file, gzip or plain JSONL [default: the shipped NQ-Open oracle file].")
@click.option("--questions", default="50", show_default=True,
              help="Questions to sample, or 'all' (the paper sampled 50).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling questions.")
@click.option("--split", type=click.Choice(["all", "dev", "test"]), default="all", show_default=True,
              help="Sample from one half of the committed dev/test split of the shipped NQ questions: tune on dev, "
              "report on test.")
@click.option("--scoring", type=click.Choice(SCORINGS), default="substring", show_default=True,
              help=SCORING_HELP.replace("is the expected value alone", "(its ANSWER field) equals an answer")
              + " The judge only serves substring.")
@click.option("--mode", type=click.Choice(MODES), default="agent", show_default=True, help=MODE_HELP)
@click.option("--k", "ks", default="1,2,5,10,20,50,100,200", show_default=True,
              help="Documents in the baseline's prompt, comma-separated (also the Ks of the ceiling table).")
@click.option("--context-window", type=click.IntRange(min=1024),
              help="Tokens the baseline prompt must fit in (its documents are cut to fit) and the agent's window "
              "[env DOCQA_CONTEXT_WINDOW; default 8192, GPT-4's window in the paper].")
@click.option("--prompt", "prompt_style", type=click.Choice(["paper", "litm"]), default="paper", show_default=True,
              help="Baseline prompt: the MemGPT paper's (ANSWER/DOCUMENT format) or lost-in-the-middle's.")
@click.option("--judge-model", help="LLM judge (the paper's prompt) for answers the string match cannot decide; "
              "same endpoint as --model.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default bench-out/doc-qa-<mode>].")
@run_options
@friendly
def doc_qa(data: Path | None, questions: str, seed: int, split: str, scoring: str, mode: str, ks: str,
           context_window: int | None, prompt_style: str,
           judge_model: str | None, out: Path | None, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Document QA (the paper's Figure 5): NaturalQuestions-Open over a corpus in archival memory.

    The corpus is every passage of the data file. Writes results.jsonl, summary.json and accuracy.png
    (baseline accuracy vs K, the agent as a level line, the retriever's recall@K; sibling runs too). Exits 1
    when any question failed at the LLM endpoint; stops after 3 such failures in a row.
    """
    from docqa.bench import doc_qa as task
    from docqa.bench.configs import DocQAConfig
    from docqa.bench.doc_qa_data import DEFAULT_DATA
    from docqa.bench.report import render_doc_qa

    if questions.strip().lower() == "all":
        count = None
    else:
        try:
            count = int(questions)
        except ValueError:
            raise click.BadParameter("a number or 'all'", param_hint="--questions") from None
        if count < 1:
            raise click.BadParameter("must be at least 1", param_hint="--questions")
    out = out or Path("bench-out") / f"doc-qa-{mode}"
    settings = _settings(out, context_window=context_window, **flags)
    config = DocQAConfig(data=data or DEFAULT_DATA, questions=count, seed=seed, mode=mode,
                         ks=_ints(ks, "--k", 1, settings.search_depth), out=out, settings=settings,
                         judge_model=judge_model, prompt_style=prompt_style,
                         progress=not quiet and sys.stderr.isatty(), scoring=scoring, split=split)
    _finish(task.run(config), as_json, render_doc_qa)
