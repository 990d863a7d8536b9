"""Cold start: a whole `docqa search` process, hybrid against --mode lexical, and `docqa ask` up to its first
LLM request.

    python benchmarks/cold_search.py            # 2,000 NQ passages, 9 rounds (~3 minutes after the build)
    python benchmarks/cold_search.py --quick    # 300 passages, 3 rounds

Every measured command is a new process, as a user types it, with a query it has not seen (no ranking cache
to help). Rounds alternate hybrid, lexical and ask, so load from other processes falls on all three alike;
the figures are medians, and the ratio is hybrid / lexical within the run (target <= 1.5: a hybrid search
should cost little more than one that loads no model). `ask` runs against the test LLM server
(testkit/fake_llm.py) in this process; the time to its first chat-completions request is what the user waits
before the LLM is even asked (target <= 2 s). The store is built first with `docqa ingest`, which also
makes the ONNX export the fast query path uses (if this machine has none yet).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for testkit.fake_llm, the test LLM server

from _common import machine, nq_questions, passage_text, write_result  # noqa: E402

DOCQA = str(Path(sys.executable).parent / "docqa")


def run(*args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([DOCQA, *args], capture_output=True, text=True, env=env, check=False, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"docqa {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def timed_ask(question: str, store: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first chat request, seconds for the whole process) of one `docqa ask`."""
    from testkit.fake_llm import FakeLLMServer, scripted_policy

    first: list[float] = []
    lock = threading.Lock()
    script = scripted_policy([("archival_memory_search", {"query": question})])

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            if not first:
                first.append(time.perf_counter())
        return script(body)

    with FakeLLMServer(policy) as server:
        started = time.perf_counter()
        total = run("ask", question, "--store", str(store), "--base-url", server.base_url, "--model", "fake",
                    env=env)
    if not first:
        raise SystemExit("docqa ask made no LLM request")
    return first[0] - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    passages, rounds = (300, 3) if args.quick else (2000, 9)
    records = nq_questions()
    start_machine = machine()
    # As a user runs it: Python keeps bytecode caches (pip compiles them on install; this machine's environment
    # sets PYTHONDONTWRITEBYTECODE, which would make every process compile docqa's modules from source).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCQA_", "OPENAI_")) and k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="docqa-cold-") as tmp:
        corpus, store = Path(tmp) / "corpus", Path(tmp) / "store"
        corpus.mkdir()
        for n, record in enumerate(records[:passages]):
            (corpus / f"p{n:05d}.txt").write_text(passage_text(record["title"], record["text"]))
        print(f"building the store: {passages} passages ...", flush=True)
        build = run("ingest", str(corpus), "--store", str(store), "--quiet", env=env)
        questions = [r["question"] for r in records[passages : passages + 3 * rounds + 3]]
        run("search", questions.pop(), "--store", str(store), env=env)  # warm the page cache, not measured
        hybrid, lexical, ask_first, ask_total = [], [], [], []
        for k in range(rounds):
            hybrid.append(run("search", questions.pop(), "--store", str(store), env=env))
            lexical.append(run("search", questions.pop(), "--store", str(store), "--mode", "lexical", env=env))
            first, total = timed_ask(questions.pop(), store, env)
            ask_first.append(first)
            ask_total.append(total)
            print(f"round {k + 1}/{rounds}: hybrid {hybrid[-1]:.2f} s, lexical {lexical[-1]:.2f} s, "
                  f"ask first request {first:.2f} s (whole ask {total:.2f} s)", flush=True)
    ratio = statistics.median(hybrid) / statistics.median(lexical)
    result = {
        "passages": passages, "rounds": rounds, "store_build_s": round(build, 2),
        "hybrid_search_s": {"median": round(statistics.median(hybrid), 3), "all": [round(x, 3) for x in hybrid]},
        "lexical_search_s": {"median": round(statistics.median(lexical), 3), "all": [round(x, 3) for x in lexical]},
        "hybrid_over_lexical": round(ratio, 3), "target_ratio": 1.5,
        "ask_first_request_s": {"median": round(statistics.median(ask_first), 3),
                                "all": [round(x, 3) for x in ask_first]},
        "ask_whole_s": {"median": round(statistics.median(ask_total), 3), "all": [round(x, 3) for x in ask_total]},
        "target_ask_first_request_s": 2.0,
        "bytecode_cache": True,
        "machine": start_machine,
    }
    print(f"hybrid/lexical {ratio:.2f} (target <= 1.5); ask to first request "
          f"{result['ask_first_request_s']['median']:.2f} s (target <= 2)")
    write_result("cold_search_quick" if args.quick else "cold_search", result)


if __name__ == "__main__":
    main()
