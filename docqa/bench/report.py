"""What a benchmark run reports: summary.json from its result rows, the table printed at the end, and
accuracy.png drawn with any sibling runs, as the paper's Figures 5 and 7 compare them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docqa.bench.configs import DocQAConfig, NestedKVConfig
from docqa.bench.doc_qa_data import Dataset


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
    n: list[int] | None = None  # samples behind each point: drawn as 95% Wilson intervals and "n=" labels
    paper: bool = False  # a value the paper states, not one we measured: drawn as unconnected crosses


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at 0% and 100%, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def save_figure(path: Path, series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
                logx: bool = False, xticks: Sequence[float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in CI and over SSH
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for line in series:
        label = line.label + (f" (n={line.n[0]})" if line.n and len(set(line.n)) == 1 else "")
        if line.paper:
            axes.plot(line.x, [100 * v for v in line.y], "x", label=label, markersize=9, mew=2, **line.extra)
        elif line.horizontal:
            axes.axhline(100 * line.y[0], linestyle="--", label=label, **line.extra)
            if line.n:
                low, high = wilson(round(line.y[0] * line.n[0]), line.n[0])
                axes.axhspan(100 * low, 100 * high, alpha=0.12, **line.extra)
        else:
            drawn = axes.plot(line.x, [100 * v for v in line.y], line.style, label=label, markersize=4,
                              **line.extra)
            if line.n:
                bounds = [wilson(round(y * n), n) for y, n in zip(line.y, line.n, strict=True)]
                below = [100 * (y - lo) for y, (lo, _) in zip(line.y, bounds, strict=True)]
                above = [100 * (hi - y) for y, (_, hi) in zip(line.y, bounds, strict=True)]
                axes.errorbar(line.x, [100 * v for v in line.y], yerr=[below, above], fmt="none", capsize=3,
                              color=drawn[0].get_color(), alpha=0.6)
                if len(set(line.n)) > 1:
                    for x, y, n in zip(line.x, line.y, line.n, strict=True):
                        axes.annotate(f"n={n}", (x, 100 * y), textcoords="offset points", xytext=(3, 4), fontsize=6)
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
    axes.legend(fontsize=7, loc="best")
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
def _verdict(row: dict[str, Any], scoring: str, strict_field: str) -> bool:
    """A row's verdict under `scoring` (rows written before both were recorded fall back to `correct`)."""
    if scoring == "strict":
        return bool(row.get(strict_field, row.get("correct")))
    return bool(row.get("correct_substring", row.get("correct")))


def _first_error(rows: list[dict[str, Any]]) -> str | None:
    return next((str(r["error"]) for r in rows if r.get("status") == "error" and r.get("error")), None)


def summarize_nested_kv(rows: list[dict[str, Any]], config: NestedKVConfig, model: str | None,
                        context_window: int | None = None) -> dict[str, Any]:
    """summary.json of a nested-kv run: accuracy (both scoring rules), errors apart from misses, searches,
    calls, tokens and (baseline) the gold pairs' survival of the cut, per nesting level."""
    levels: dict[str, Any] = {}
    for level in config.levels:
        mine = [r for r in rows if r["level"] == level]
        correct = sum(1 for r in mine if _verdict(r, config.scoring, "correct_strict"))
        errors = sum(1 for r in mine if r["status"] == "error")
        uses_llm = config.mode != "ceiling"
        levels[str(level)] = {
            "lookups": level + 1, "n": len(mine), "correct": correct,
            "accuracy": correct / len(mine) if mine else None,
            "accuracy_substring": mean(float(_verdict(r, "substring", "")) for r in mine),
            "accuracy_strict": mean(float(_verdict(r, "strict", "correct_strict")) for r in mine),
            "errors": errors, "misses": len(mine) - correct - errors,
            "gold_survived": mean(float(r["gold_survived"]) for r in mine if "gold_survived" in r),
            "mean_pairs_kept": mean(r.get("pairs_kept") for r in mine),
            "mean_searches": mean(r["searches"] for r in mine) if config.mode != "baseline" else None,
            "mean_searches_stop_rule": mean(r.get("searches_stop_rule") for r in mine),
            "mean_llm_calls": mean(r["llm_calls"] for r in mine) if uses_llm else None,
            "mean_tokens": mean(r["tokens"] for r in mine) if uses_llm else None,
            "mean_seconds": mean(r["seconds"] for r in mine),
        }
    total = sum(v["n"] for v in levels.values())
    return {
        "bench": "nested-kv", "mode": config.mode, "model": model, "samples_per_level": config.samples,
        "scoring": config.scoring, "context_window": context_window if config.mode == "baseline" else None,
        "page_size": config.settings.page_size, "search_depth": config.settings.search_depth,
        "embedding_model": config.settings.embedding_model, "levels": levels, "n": total,
        "accuracy": (sum(v["correct"] for v in levels.values()) / total) if total else None,
        "errors": sum(v["errors"] for v in levels.values()), "first_error": _first_error(rows),
        "results": str(config.out / "results.jsonl"), "figure": str(config.out / "accuracy.png"),
    }


def render_nested_kv(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    baseline = summary["mode"] == "baseline"
    rows = []
    for level, v in summary["levels"].items():
        rows.append([level, v["lookups"], f"{v['correct']}/{v['n']}", percent(v["accuracy"]),
                     percent(v.get("accuracy_substring")), percent(v.get("accuracy_strict")), v.get("misses"),
                     v["errors"], *([percent(v.get("gold_survived")), rounded(v.get("mean_pairs_kept"))]
                                    if baseline else []),
                     rounded(v["mean_searches"]), rounded(v["mean_searches_stop_rule"]),
                     rounded(v["mean_llm_calls"]), rounded(v["mean_tokens"], 0), rounded(v["mean_seconds"], 2)])
    head = f"nested-kv, mode {summary['mode']}" + (f", model {summary['model']}" if summary["model"] else "")
    if baseline and summary.get("context_window"):
        head += f", prompt cut to {summary['context_window']:,} tokens"
    table = format_table(["level", "lookups", "correct", "accuracy", "substring", "strict", "misses", "errors",
                          *(["gold kept", "pairs kept"] if baseline else []),
                          "searches", "searches*", "llm calls", "tokens", "s/sample"], rows)
    notes = [f"accuracy overall: {percent(summary['accuracy'])} (scoring: {summary.get('scoring', 'substring')}: "
             "substring = the expected UUID occurs in the reply, the papers' rule; strict = the reply is the UUID "
             f"alone); errors: the LLM endpoint failed, not counted as misses; figure: {summary['figure']}"]
    if baseline:
        notes.append("gold kept: every pair of the lookup chain survived the cut (pairs are dropped from the end "
                     "of the JSON to fit the window; the question is always kept)")
    if summary["mode"] == "ceiling":
        notes.append("searches: pages read, including every page of the final search to prove the last value "
                     "is no key; searches*: what the paper's stopping rule needs (stop when a page shows the "
                     "value only as a value)")
    if summary.get("stopped"):
        notes.append(f"run {summary['stopped']}")
    return "\n".join([head, table, *notes])


# Values the MemGPT paper states in its text (section 3.2.2, Figure 7), not read off its plot: the fixed-context
# baselines' accuracy at the nesting level where it says they reach 0%.
PAPER_NESTED_KV = [("paper (its text): GPT-3.5 fixed context, 0%", [1], [0.0]),
                   ("paper (its text): GPT-4 / GPT-4 Turbo fixed context, 0%", [3], [0.0])]


def plot_nested_kv(out: Path, summary: dict[str, Any]) -> None:
    """Accuracy vs nesting level for this run and any sibling runs (other modes or models), as Figure 7, with
    95% intervals, the samples per point, and the paper's stated values marked as the paper's."""
    series = []
    for item in [summary, *sibling_summaries(out, "nested-kv")]:
        points = [(int(level), v["accuracy"], v["n"]) for level, v in item.get("levels", {}).items()
                  if v.get("accuracy") is not None]
        if points:
            points.sort()
            series.append(Series(series_label(item), [p[0] for p in points], [p[1] for p in points],
                                 n=[p[2] for p in points]))
    series += [Series(label, list(x), list(y), paper=True) for label, x, y in PAPER_NESTED_KV]
    levels = sorted({x for s in series for x in s.x}) or [0]
    save_figure(out / "accuracy.png", series, title="Nested key-value retrieval (140 UUID pairs)",
                xlabel="nesting level (lookups - 1)", ylabel="accuracy (%)", xticks=levels)


# -- document QA (Figure 5) -------------------------------------------------------------------------
SURVIVAL = ("gold_retrieved", "gold_intact", "gold_kept", "answer_substring_in_prompt")


def _accuracy(rows: list[dict[str, Any]], scoring: str = "substring") -> dict[str, Any]:
    n = len(rows)
    correct = sum(1 for r in rows if (r.get("strict") if scoring == "strict" else r.get("correct")))
    errors = sum(1 for r in rows if r.get("status") == "error")
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None,
            "accuracy_substring": sum(1 for r in rows if r.get("correct")) / n if n else None,
            "accuracy_strict": sum(1 for r in rows if r.get("strict")) / n if n else None,
            "em_accuracy": sum(1 for r in rows if r.get("em")) / n if n else None,
            "judged": sum(1 for r in rows if r.get("judged_by") == "llm"),
            "undecided": sum(1 for r in rows if r.get("status") != "error" and r.get("judged_by") is None),
            "errors": errors, "misses": n - correct - errors, "first_error": _first_error(rows),
            "mean_tokens": mean(r.get("tokens") for r in rows), "mean_seconds": mean(r.get("seconds") for r in rows)}


def _recall(ranks: list[int | None], ks: Iterable[int]) -> dict[str, float | None]:
    n = len(ranks)
    return {str(k): (sum(1 for x in ranks if x is not None and x <= k) / n if n else None) for k in ks}


def summarize_doc_qa(rows: list[dict[str, Any]], config: DocQAConfig, dataset: Dataset,
                     model: str | None, collection: str, halves: dict[int, str] | None = None) -> dict[str, Any]:
    """summary.json of a doc-qa run: recall per K on each half of the dev/test split and what survives the
    baseline's cut (ceiling), accuracy per K (baseline) or overall (agent), both scoring rules, errors apart."""
    halves = halves or {}
    summary: dict[str, Any] = {
        "bench": "doc-qa", "mode": config.mode, "model": model, "judge_model": config.judge_model,
        "data": str(dataset.path), "data_fingerprint": dataset.fingerprint, "store": collection,
        "corpus_passages": len(dataset.passages), "questions": len({r["qid"] for r in rows}), "seed": config.seed,
        "split": config.split, "scoring": config.scoring,
        "context_window": config.settings.context_window, "prompt": config.prompt_style, "ks": config.ks,
        "search_depth": config.settings.search_depth, "embedding_model": config.settings.embedding_model,
        "results": str(config.out / "results.jsonl"), "figure": str(config.out / "accuracy.png"),
        "n": len(rows), "errors": sum(1 for r in rows if r.get("status") == "error"), "first_error": _first_error(rows),
    }
    if config.mode == "ceiling":
        scored = [r for r in rows if r["gold"]]
        depth = range(1, config.settings.search_depth + 1)
        for mode in ("hybrid", "dense"):
            ranks = [r[f"rank_{mode}"] for r in scored]
            summary[f"recall_{mode}"] = _recall(ranks, depth)
            summary[f"recall_{mode}_all_pages"] = sum(1 for x in ranks if x is not None) / (len(scored) or 1)
            summary[f"recall_{mode}_by_split"] = {
                half: {"n": len(mine), **_recall([r[f"rank_{mode}"] for r in mine], config.ks)}
                for half in ("dev", "test") if (mine := [r for r in scored if halves.get(r["qid"]) == half])}
        summary["questions_with_gold"] = len(scored)
        summary["survival"] = {name: {str(k): mean(float(r.get("survival", {}).get(str(k), {}).get(name, False))
                                                   for r in rows) for k in config.ks} for name in SURVIVAL}
        summary["survival_by_split"] = {
            half: {name: {str(k): mean(float(r.get("survival", {}).get(str(k), {}).get(name, False)) for r in mine)
                          for k in config.ks} for name in SURVIVAL}
            for half in ("dev", "test") if (mine := [r for r in rows if halves.get(r["qid"]) == half])}
    elif config.mode == "baseline":
        summary["by_k"] = {}
        for k in config.ks:
            mine = [r for r in rows if r["k"] == k]
            summary["by_k"][str(k)] = {**_accuracy(mine, config.scoring),
                                       **{name: mean(float(r.get(name, False)) for r in mine) for name in SURVIVAL}}
    else:
        summary.update(_accuracy(rows, config.scoring))
        summary.update(mean_searches=mean(r.get("searches") for r in rows),
                       mean_llm_calls=mean(r.get("llm_calls") for r in rows),
                       gold_seen=mean(float(r.get("gold_seen", False)) for r in rows),
                       step_limit=sum(1 for r in rows if r.get("status") == "step_limit"))
    return summary


_SURVIVAL_NOTE = ("gold kept: a gold passage is in the cut prompt whole or with its answer-bearing span (an answer, "
                  "as whole words, in the part the cut kept); intact: whole; answer substring: the old loose figure, "
                  "an answer string anywhere in the prompt, frame and distractors included")


def render_doc_qa(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    mode = summary["mode"]
    head = (f"doc-qa, mode {mode}" + (f", model {summary['model']}" if summary["model"] else "")
            + f": {summary['questions']} questions, corpus of {summary['corpus_passages']} passages")
    if mode == "ceiling":
        cut = summary["survival"]
        by_split = summary.get("recall_hybrid_by_split", {})
        rows = [[k, percent(summary["recall_hybrid"].get(str(k))),
                 *[percent(by_split[h].get(str(k))) for h in ("dev", "test") if h in by_split],
                 percent(summary["recall_dense"].get(str(k))), percent(cut["gold_kept"].get(str(k))),
                 percent(cut["gold_intact"].get(str(k))), percent(cut["answer_substring_in_prompt"].get(str(k)))]
                for k in summary["ks"]]
        table = format_table(["K", "recall hybrid", *[f"{h} (n={by_split[h]['n']})" for h in ("dev", "test")
                                                     if h in by_split],
                              "recall dense", "gold kept", "gold intact", "answer substring"], rows)
        note = (f"recall@K: gold passage among the top K passages (hybrid: all questions, then each half of the "
                f"dev/test split); cut to {summary['context_window']:,} tokens as the baseline is: " + _SURVIVAL_NOTE
                + f"; all pages: recall hybrid {percent(summary['recall_hybrid_all_pages'])}, dense "
                f"{percent(summary['recall_dense_all_pages'])}")
    elif mode == "baseline":
        rows = [[k, v["n"], percent(v["accuracy"]), percent(v["accuracy_substring"]), percent(v["accuracy_strict"]),
                 v["misses"], v["errors"], percent(v["gold_retrieved"]), percent(v["gold_kept"]),
                 percent(v["answer_substring_in_prompt"]), rounded(v["mean_tokens"], 0), v["undecided"]]
                for k, v in summary["by_k"].items()]
        table = format_table(["K", "n", "accuracy", "substring+judge", "strict", "misses", "errors", "gold retrieved",
                              "gold kept", "answer substring", "tokens", "undecided"], rows)
        note = ("undecided: no string match and no --judge-model; counted wrong; " + _SURVIVAL_NOTE)
    else:
        table = format_table(
            ["n", "accuracy", "substring+judge", "strict", "misses", "errors", "gold seen", "searches", "llm calls",
             "tokens", "s/question", "step limit", "undecided"],
            [[summary["n"], percent(summary["accuracy"]), percent(summary["accuracy_substring"]),
              percent(summary["accuracy_strict"]), summary["misses"], summary["errors"],
              percent(summary["gold_seen"]), rounded(summary["mean_searches"]), rounded(summary["mean_llm_calls"]),
              rounded(summary["mean_tokens"], 0), rounded(summary["mean_seconds"]), summary["step_limit"],
              summary["undecided"]]])
        note = "gold seen: the gold passage was on a page the agent read; undecided: counted wrong"
    if mode != "ceiling":
        note += (f"; accuracy follows --scoring {summary.get('scoring', 'substring')} (substring: an answer string "
                 "in the reply, the papers' rule, then the judge; strict: the reply's ANSWER field equals an answer "
                 "after SQuAD normalisation); errors: the LLM endpoint failed, not counted as misses")
    if summary.get("stopped"):
        note += f"\nrun {summary['stopped']}"
    return "\n".join([head, table, note, f"figure: {summary['figure']}"])


def plot_doc_qa(out: Path, summary: dict[str, Any]) -> None:
    """Accuracy vs K like the paper's Figure 5: baselines as curves, the agent as a level line, the retriever's
    recall@K and what survives the baseline's cut, with 95% intervals and n; sibling runs on the same corpus
    and store are drawn too. (The paper states no Figure 5 value in its text, so none of its points is drawn.)"""
    same = [s for s in sibling_summaries(out, "doc-qa") if s.get("store") == summary["store"]]
    series: list[Series] = []
    for item in [summary, *same]:
        label = series_label(item)
        if item["mode"] == "ceiling":
            n = item.get("questions_with_gold") or item["questions"]
            for mode, style in (("hybrid", "-"), ("dense", "--")):
                recall = {k: v for k, v in item[f"recall_{mode}"].items() if int(k) in item["ks"]}
                series.append(Series(f"retriever recall@K ({mode})", [int(k) for k in recall], list(recall.values()),
                                     style, n=[n] * len(recall)))
            cut = item.get("survival", {}).get("gold_kept")
            if cut:
                series.append(Series(f"gold passage survives cut to {item['context_window']:,} tokens",
                                     [int(k) for k in cut], list(cut.values()), ":s", n=[item["questions"]] * len(cut)))
        elif item["mode"] == "baseline":
            points = [(int(k), v["accuracy"], v["n"]) for k, v in item["by_k"].items() if v["accuracy"] is not None]
            series.append(Series(label, [p[0] for p in points], [p[1] for p in points], n=[p[2] for p in points]))
        elif item.get("accuracy") is not None:
            series.append(Series(label, [1], [item["accuracy"]], horizontal=True, n=[item["n"]]))
    ks = sorted({int(k) for item in [summary, *same] for k in item.get("ks", [])})
    save_figure(out / "accuracy.png", series, title="Document QA (NaturalQuestions-Open)",
                xlabel="documents retrieved (K)", ylabel="accuracy / recall (%)", logx=True, xticks=ks or None)
