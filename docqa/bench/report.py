"""What a benchmark run reports: summary.json from its result rows, the table printed at the end, and
accuracy.png drawn with any sibling runs, as the paper's Figures 5 and 7 compare them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the run modules import this one
    from docqa.bench import doc_qa, nested_kv


# -- tables and figures, for both benchmarks --------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def mean(values: Iterable[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def rounded(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class Series:
    """One line of a figure; `horizontal` draws y[0] across the whole x range (a K-independent result)."""

    label: str
    x: list[float]
    y: list[float]
    style: str = "-o"
    horizontal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def save_figure(path: Path, series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
                logx: bool = False, xticks: Sequence[float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in CI and over SSH
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for line in series:
        if line.horizontal:
            axes.axhline(100 * line.y[0], linestyle="--", label=line.label, **line.extra)
        else:
            axes.plot(line.x, [100 * v for v in line.y], line.style, label=line.label, markersize=4, **line.extra)
    if logx:
        axes.set_xscale("log")
    if xticks is not None:
        axes.set_xticks(list(xticks))
        axes.set_xticklabels([f"{t:g}" for t in xticks])
        axes.minorticks_off()
    axes.set_ylim(-3, 103)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def sibling_summaries(out: Path, bench: str, accept: Callable[[dict[str, Any]], bool] = lambda s: True
                      ) -> list[dict[str, Any]]:
    """summary.json files of the same benchmark in sibling output directories (other modes and models),
    so one figure compares them all, as the paper's figures do."""
    found: list[dict[str, Any]] = []
    if not out.parent.is_dir():
        return found
    for path in sorted(out.parent.glob("*/summary.json")):
        if path.parent.resolve() == out.resolve():
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and summary.get("bench") == bench and accept(summary):
            found.append(summary)
    return found


def series_label(summary: dict[str, Any]) -> str:
    mode = summary.get("mode", "?")
    model = summary.get("model")
    names = {"agent": "docqa agent", "baseline": "fixed context", "ceiling": "ceiling (no LLM)"}
    return f"{names.get(mode, mode)} + {model}" if model else names.get(mode, mode)


# -- nested key-value retrieval (Figure 7) ----------------------------------------------------------
def summarize_nested_kv(rows: list[dict[str, Any]], config: nested_kv.Config, model: str | None) -> dict[str, Any]:
    """summary.json of a nested-kv run: accuracy, searches, calls and tokens per nesting level."""
    levels: dict[str, Any] = {}
    for level in config.levels:
        mine = [r for r in rows if r["level"] == level]
        correct = sum(1 for r in mine if r["correct"])
        uses_llm = config.mode != "ceiling"
        levels[str(level)] = {
            "lookups": level + 1, "n": len(mine), "correct": correct,
            "accuracy": correct / len(mine) if mine else None,
            "errors": sum(1 for r in mine if r["status"] == "error"),
            "mean_searches": mean(r["searches"] for r in mine) if config.mode != "baseline" else None,
            "mean_searches_stop_rule": mean(r.get("searches_stop_rule") for r in mine),
            "mean_llm_calls": mean(r["llm_calls"] for r in mine) if uses_llm else None,
            "mean_tokens": mean(r["tokens"] for r in mine) if uses_llm else None,
            "mean_seconds": mean(r["seconds"] for r in mine),
        }
    total = sum(v["n"] for v in levels.values())
    return {
        "bench": "nested-kv", "mode": config.mode, "model": model, "samples_per_level": config.samples,
        "page_size": config.settings.page_size, "search_depth": config.settings.search_depth,
        "embedding_model": config.settings.embedding_model, "levels": levels,
        "accuracy": (sum(v["correct"] for v in levels.values()) / total) if total else None,
        "results": str(config.out / "results.jsonl"), "figure": str(config.out / "accuracy.png"),
    }


def render_nested_kv(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    rows = []
    for level, v in summary["levels"].items():
        rows.append([level, v["lookups"], f"{v['correct']}/{v['n']}", percent(v["accuracy"]),
                     rounded(v["mean_searches"]), rounded(v["mean_searches_stop_rule"]),
                     rounded(v["mean_llm_calls"]), rounded(v["mean_tokens"], 0), rounded(v["mean_seconds"], 2),
                     v["errors"] or ""])
    head = f"nested-kv, mode {summary['mode']}" + (f", model {summary['model']}" if summary["model"] else "")
    table = format_table(["level", "lookups", "correct", "accuracy", "searches", "searches*", "llm calls",
                          "tokens", "s/sample", "errors"], rows)
    notes = [f"accuracy overall: {percent(summary['accuracy'])}; figure: {summary['figure']}"]
    if summary["mode"] == "ceiling":
        notes.append("searches: pages read, including every page of the final search to prove the last value "
                     "is no key; searches*: what the paper's stopping rule needs (stop when a page shows the "
                     "value only as a value)")
    return "\n".join([head, table, *notes])


def plot_nested_kv(out: Path, summary: dict[str, Any]) -> None:
    """Accuracy vs nesting level for this run and any sibling runs (other modes or models), as Figure 7."""
    series = []
    for item in [summary, *sibling_summaries(out, "nested-kv")]:
        points = [(int(level), v["accuracy"]) for level, v in item.get("levels", {}).items()
                  if v.get("accuracy") is not None]
        if points:
            points.sort()
            series.append(Series(series_label(item), [p[0] for p in points], [p[1] for p in points]))
    levels = sorted({x for s in series for x in s.x}) or [0]
    save_figure(out / "accuracy.png", series, title="Nested key-value retrieval (140 UUID pairs)",
                xlabel="nesting level (lookups - 1)", ylabel="accuracy (%)", xticks=levels)


# -- document QA (Figure 5) -------------------------------------------------------------------------
def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {"n": n, "correct": sum(1 for r in rows if r.get("correct")),
            "accuracy": sum(1 for r in rows if r.get("correct")) / n if n else None,
            "em_accuracy": sum(1 for r in rows if r.get("em")) / n if n else None,
            "judged": sum(1 for r in rows if r.get("judged_by") == "llm"),
            "undecided": sum(1 for r in rows if r.get("status") != "error" and r.get("judged_by") is None),
            "errors": sum(1 for r in rows if r.get("status") == "error"),
            "mean_tokens": mean(r.get("tokens") for r in rows), "mean_seconds": mean(r.get("seconds") for r in rows)}


def summarize_doc_qa(rows: list[dict[str, Any]], config: doc_qa.Config, dataset: doc_qa.Dataset,
                     model: str | None, collection: str) -> dict[str, Any]:
    """summary.json of a doc-qa run: recall per K (ceiling), accuracy per K (baseline) or overall (agent)."""
    summary: dict[str, Any] = {
        "bench": "doc-qa", "mode": config.mode, "model": model, "judge_model": config.judge_model,
        "data": str(dataset.path), "data_fingerprint": dataset.fingerprint, "store": collection,
        "corpus_passages": len(dataset.passages), "questions": len({r["qid"] for r in rows}), "seed": config.seed,
        "context_window": config.settings.context_window, "prompt": config.prompt_style, "ks": config.ks,
        "search_depth": config.settings.search_depth, "embedding_model": config.settings.embedding_model,
        "results": str(config.out / "results.jsonl"), "figure": str(config.out / "accuracy.png"),
    }
    if config.mode == "ceiling":
        scored = [r for r in rows if r["gold"]]
        n = len(scored) or 1
        for mode in ("hybrid", "dense"):
            ranks = [r[f"rank_{mode}"] for r in scored]
            summary[f"recall_{mode}"] = {str(k): sum(1 for x in ranks if x is not None and x <= k) / n
                                         for k in range(1, config.settings.search_depth + 1)}
            summary[f"recall_{mode}_all_pages"] = sum(1 for x in ranks if x is not None) / n
        summary["questions_with_gold"] = len(scored)
        summary["answer_in_context"] = {str(k): mean(float(r["answer_in_context"].get(str(k), False)) for r in rows)
                                        for k in config.ks}
    elif config.mode == "baseline":
        summary["by_k"] = {}
        for k in config.ks:
            mine = [r for r in rows if r["k"] == k]
            summary["by_k"][str(k)] = {**_accuracy(mine),
                                       "gold_in_context": mean(float(r["gold_in_context"]) for r in mine),
                                       "answer_in_context": mean(float(r["answer_in_context"]) for r in mine)}
    else:
        summary.update(_accuracy(rows))
        summary.update(mean_searches=mean(r.get("searches") for r in rows),
                       mean_llm_calls=mean(r.get("llm_calls") for r in rows),
                       gold_seen=mean(float(r.get("gold_seen", False)) for r in rows),
                       step_limit=sum(1 for r in rows if r.get("status") == "step_limit"))
    return summary


def render_doc_qa(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    mode = summary["mode"]
    head = (f"doc-qa, mode {mode}" + (f", model {summary['model']}" if summary["model"] else "")
            + f": {summary['questions']} questions, corpus of {summary['corpus_passages']} passages")
    if mode == "ceiling":
        rows = [[k, percent(summary["recall_hybrid"].get(str(k))), percent(summary["recall_dense"].get(str(k))),
                 percent(summary["answer_in_context"].get(str(k)))] for k in summary["ks"]]
        rows.append(["all pages", percent(summary["recall_hybrid_all_pages"]),
                     percent(summary["recall_dense_all_pages"]), ""])
        table = format_table(["K", "recall@K hybrid", "recall@K dense", "answer in cut prompt@K"], rows)
        note = (f"recall: gold passage among the top K passages; answer in cut prompt: an answer string survives "
                f"the baseline's truncation to {summary['context_window']} tokens")
    elif mode == "baseline":
        rows = [[k, v["n"], percent(v["accuracy"]), percent(v["em_accuracy"]), percent(v["gold_in_context"]),
                 percent(v["answer_in_context"]), rounded(v["mean_tokens"], 0), v["undecided"], v["errors"]]
                for k, v in summary["by_k"].items()]
        table = format_table(["K", "n", "accuracy", "string match", "gold retrieved", "answer in prompt",
                              "tokens", "undecided", "errors"], rows)
        note = "undecided: no string match and no --judge-model; counted wrong"
    else:
        table = format_table(
            ["n", "accuracy", "string match", "gold seen", "searches", "llm calls", "tokens", "s/question",
             "step limit", "undecided", "errors"],
            [[summary["n"], percent(summary["accuracy"]), percent(summary["em_accuracy"]),
              percent(summary["gold_seen"]), rounded(summary["mean_searches"]), rounded(summary["mean_llm_calls"]),
              rounded(summary["mean_tokens"], 0), rounded(summary["mean_seconds"]), summary["step_limit"],
              summary["undecided"], summary["errors"]]])
        note = "gold seen: the gold passage was on a page the agent read; undecided: counted wrong"
    return "\n".join([head, table, note, f"figure: {summary['figure']}"])


def plot_doc_qa(out: Path, summary: dict[str, Any]) -> None:
    """Accuracy vs K like the paper's Figure 5: baselines as curves, the agent as a level line, and the
    retriever's recall@K; sibling runs on the same corpus and store are drawn too."""
    same = [s for s in sibling_summaries(out, "doc-qa") if s.get("store") == summary["store"]]
    series: list[Series] = []
    for item in [summary, *same]:
        label = series_label(item)
        if item["mode"] == "ceiling":
            for mode, style in (("hybrid", "-"), ("dense", "--")):
                recall = item[f"recall_{mode}"]
                series.append(Series(f"retriever recall@K ({mode})", [int(k) for k in recall], list(recall.values()),
                                     style))
            cut = item["answer_in_context"]
            series.append(Series(f"answer survives truncation ({item['context_window']} tokens)",
                                 [int(k) for k in cut], list(cut.values()), ":s"))
        elif item["mode"] == "baseline":
            points = [(int(k), v["accuracy"]) for k, v in item["by_k"].items() if v["accuracy"] is not None]
            series.append(Series(label, [p[0] for p in points], [p[1] for p in points]))
        elif item.get("accuracy") is not None:
            series.append(Series(label, [1], [item["accuracy"]], horizontal=True))
    ks = sorted({int(k) for item in [summary, *same] for k in item.get("ks", [])})
    save_figure(out / "accuracy.png", series, title="Document QA (NaturalQuestions-Open)",
                xlabel="documents retrieved (K)", ylabel="accuracy / recall (%)", logx=True, xticks=ks or None)
