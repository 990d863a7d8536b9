"""The harness's honesty (issue 14): the nested-KV baseline cut to the server's window, errors apart from misses,
gold-passage survival instead of a substring anywhere, the committed dev/test split and the strict scoring rule."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from docqa.bench import doc_qa, doc_qa_data
from docqa.bench.common import contains_words, exact_match, strict_value
from docqa.bench.nested_kv_data import DEFAULT_DATA_DIR, load_samples
from testkit.fake_llm import FakeLLMServer, ServerReply, text_response
from tests.test_bench import UUID, doc_baseline_policy, kv_baseline_policy, rows, run_bench, run_json, write_qa


def window_policy(window: int, refuse_as: str = "vllm") -> Any:
    """kv_baseline_policy behind a server that runs `window` tokens and counts UUID text as llama.cpp does,
    about one token a character (the 140-pair prompt is some 11,800 tokens), refusing longer prompts."""

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        tokens = sum(len(m["content"] or "") for m in body["messages"]) + 20  # + the chat template's frame
        if tokens > window:
            raise ServerReply(400, f"This model's maximum context length is {window} tokens. However, you "
                                   f"requested {tokens} tokens in the messages. Please reduce the length.")
        return kv_baseline_policy(body)

    return policy


def kv_baseline(out: Path, server: FakeLLMServer, *extra: object, samples: int = 4) -> Any:
    return run_bench("nested-kv", "--mode", "baseline", "--levels", "0,3", "--samples", samples, "--out", out,
                     "--quiet", "--model", "fake", "--base-url", server.base_url, "--api-key", "x", *extra)


# -- nested KV: the baseline fits the window --------------------------------------------------------
def test_nested_kv_baseline_fits_an_8192_token_server_and_reports_gold_pair_survival(tmp_path: Path) -> None:
    with FakeLLMServer(window_policy(8192)) as server:
        result = kv_baseline(tmp_path, server)
    assert result.exit_code == 0, result.output
    written = rows(tmp_path)
    assert len(written) == 8 and all(r["status"] == "answered" and r["llm_calls"] == 1 for r in written)
    assert all(60 < r["pairs_kept"] < 140 for r in written)  # cut, not dropped wholesale
    # The policy follows the pairs it is sent: it is right exactly when the chain's pairs survived the cut.
    assert [r["correct"] for r in written] == [r["gold_survived"] for r in written]
    assert any(r["gold_survived"] for r in written) and not all(r["gold_survived"] for r in written)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["context_window"] == 8192
    assert summary["levels"]["0"]["gold_survived"] is not None
    assert "gold kept" in result.stdout


def test_nested_kv_baseline_takes_the_window_the_server_states(tmp_path: Path) -> None:
    with FakeLLMServer(window_policy(4096), model_info={"max_model_len": 4096}) as server:
        result = kv_baseline(tmp_path, server, "--context-window", 32768)
    assert result.exit_code == 0, result.output
    assert all(r["status"] == "answered" and r["context_window"] == 4096 and r["llm_calls"] == 1
               for r in rows(tmp_path))
    assert "from the server" in result.stderr


def test_nested_kv_baseline_recuts_to_the_window_a_refusal_names(tmp_path: Path) -> None:
    """A server that states no window but refuses the prompt as too long gets it once more, cut to its window."""
    with FakeLLMServer(window_policy(4096)) as server:
        result = kv_baseline(tmp_path, server)
    assert result.exit_code == 0, result.output
    assert all(r["status"] == "answered" and r["llm_calls"] == 2 and r["context_window"] == 4096
               for r in rows(tmp_path))


def test_truncation_keeps_the_question_and_drops_pairs_from_the_end() -> None:
    from docqa.bench.nested_kv_data import baseline_prompt, fit_pairs

    sample = load_samples(DEFAULT_DATA_DIR, [2], 1)[0]
    kept = fit_pairs(sample.query_key, sample.pairs, 4096)
    assert kept == sample.pairs[: len(kept)] and 0 < len(kept) < 140
    prompt = baseline_prompt(sample.query_key, kept)
    assert len(prompt) < 4096 and prompt.rstrip().endswith("Answer only with the value, nothing else.")
    assert f'following key: "{sample.query_key}"' in prompt
    assert len(re.findall(rf'"{UUID}": "{UUID}"', prompt)) == len(kept)


# -- errors apart from misses -----------------------------------------------------------------------
def test_an_always_failing_server_stops_the_run_after_three_failures(tmp_path: Path) -> None:
    with FakeLLMServer(kv_baseline_policy, faults=["500"] * 100) as server:
        result = kv_baseline(tmp_path, server, "--context-window", 16384)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("docqa: error:")]
    assert len(errors) == 1 and "3 failed requests in a row" in errors[0] and "HTTP 500" in errors[0]
    assert "Traceback" not in result.output
    assert len(rows(tmp_path)) == 3  # of 8 planned
    assert len(server.requests) == 3  # one request per failed sample: no retries hide behind them
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == 3 and summary["levels"]["0"]["misses"] == 0


def test_no_progress_bar_off_a_terminal(tmp_path: Path) -> None:
    with FakeLLMServer(kv_baseline_policy) as server:
        result = run_bench("nested-kv", "--mode", "baseline", "--levels", "0", "--samples", 2, "--out", tmp_path,
                           "--model", "fake", "--base-url", server.base_url, "--api-key", "x")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "nested-kv baseline:" not in result.stderr  # no tqdm bar in a log


def test_failures_after_successes_stop_the_run_too(tmp_path: Path) -> None:
    answered: list[int] = []

    def policy(body: dict[str, Any]) -> dict[str, Any]:
        answered.append(1)
        if len(answered) == 2:
            server.add_faults(*["500"] * 100)  # the endpoint dies after two answers
        return kv_baseline_policy(body)

    with FakeLLMServer(policy) as server:
        result = kv_baseline(tmp_path, server, "--context-window", 16384)
    assert result.exit_code == 1
    assert [r["status"] for r in rows(tmp_path)] == ["answered"] * 2 + ["error"] * 3


def test_one_failed_sample_is_an_error_not_a_miss_and_a_rerun_retries_it(tmp_path: Path) -> None:
    with FakeLLMServer(kv_baseline_policy, faults=["500"]) as server:  # the first sample's one request fails
        first = kv_baseline(tmp_path, server, "--context-window", 16384, "--json", samples=2)
        summary = json.loads(first.stdout)
        assert first.exit_code == 1 and "1 of 4 samples failed at the LLM endpoint" in first.stderr
        assert summary["errors"] == 1 and summary["accuracy"] == 3 / 4
        assert (summary["levels"]["0"]["errors"], summary["levels"]["0"]["misses"]) == (1, 0)
        again = kv_baseline(tmp_path, server, "--context-window", 16384, "--json", samples=2)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["accuracy"] == 1.0


# -- scoring ----------------------------------------------------------------------------------------
def test_strict_scoring_refuses_a_reply_that_lists_many_uuids(tmp_path: Path) -> None:
    def policy(body: dict[str, Any]) -> dict[str, Any]:
        right = kv_baseline_policy(body)["choices"][0]["message"]["content"]
        others = re.findall(UUID, body["messages"][-1]["content"])[:5]
        return text_response("Candidates: " + ", ".join([*others, right]))

    with FakeLLMServer(policy) as server:
        result = kv_baseline(tmp_path, server, "--context-window", 16384, "--scoring", "strict", "--json", samples=2)
    summary = json.loads(result.stdout)
    assert summary["accuracy"] == 0.0 and summary["scoring"] == "strict"
    assert summary["levels"]["0"]["accuracy_substring"] == 1.0 and summary["levels"]["0"]["accuracy_strict"] == 0.0


def test_strict_rules() -> None:
    key = "9f1e4a2c-0b7d-4e55-8a3b-2c6d1f0e9a77"
    assert strict_value(f" {key.upper()}. ", key) and strict_value(f'"{key}"', key)
    assert not strict_value(f"The value is {key}", key)
    assert exact_match("ANSWER: the Fredville, DOCUMENT: The capital of Freedonia is Fredville.", ["Fredville"])
    assert exact_match("Fredville\n", ["fredville"])
    assert not exact_match("ANSWER: Fredville or Paris, DOCUMENT: ...", ["Fredville"])
    assert not exact_match("INSUFFICIENT INFORMATION", ["Fredville"])


def test_doc_qa_baseline_reports_both_scorings(tmp_path: Path) -> None:
    """doc_baseline_policy quotes the whole first document as its answer: a substring hit, never an exact one."""
    data = write_qa(tmp_path / "qa.jsonl")
    with FakeLLMServer(doc_baseline_policy) as server:
        summary = run_json("doc-qa", "--mode", "baseline", "--data", data, "--questions", 2, "--k", "1",
                           "--out", tmp_path / "out", "--model", "fake", "--base-url", server.base_url,
                           "--api-key", "x", "--scoring", "strict")
    by_k = summary["by_k"]["1"]
    assert (by_k["accuracy"], by_k["accuracy_substring"], by_k["accuracy_strict"]) == (0.0, 1.0, 0.0)
    assert by_k["gold_kept"] == 1.0 and by_k["errors"] == 0 and by_k["misses"] == 2


# -- doc QA: what survives the cut ------------------------------------------------------------------
def test_survival_counts_the_gold_passage_not_an_answer_string_anywhere() -> None:
    gold = doc_qa_data.Passage(0, "Snorkwhale", "Snorkwhales swim in cold seas. " * 30 + "A snorkwhale has one tail.")
    other = doc_qa_data.Passage(1, "Ledger", "There is none left in 2018; one of them said so.")
    question = doc_qa_data.Question(0, "how many tails does a snorkwhale have", ["one"], [0])
    for documents, window, expected in [
        ([gold], 8192, {"gold_retrieved": True, "gold_intact": True, "gold_kept": True}),
        ([other, gold], 8192, {"gold_retrieved": True, "gold_intact": True, "gold_kept": True}),
        ([other], 8192, {"gold_retrieved": False, "gold_intact": False, "gold_kept": False}),
        ([other, gold], 1200, {"gold_retrieved": True, "gold_intact": False, "gold_kept": False}),
    ]:
        cut = doc_qa.cut_documents(question.question, documents, window)
        found = doc_qa.survival(question, documents, cut, doc_qa.assemble_prompt(question.question, cut))
        assert {k: found[k] for k in expected} == expected, (window, [d.id for d in documents])
        if other in documents:
            assert found["answer_substring_in_prompt"]  # the loose figure counts the distractor's "one"
    assert not contains_words("there is none left", ["one"]) and contains_words("one of them", ["One"])


# -- the dev/test split -----------------------------------------------------------------------------
def test_the_committed_split_halves_the_shipped_questions_as_make_split_does() -> None:
    dataset = doc_qa_data.load_dataset(doc_qa_data.DEFAULT_DATA)
    committed = json.loads(doc_qa_data.SPLIT_FILE.read_text())
    assert committed["data_fingerprint"] == dataset.fingerprint
    halves = doc_qa_data.load_split(dataset)
    assert halves == doc_qa_data.make_split(len(dataset.questions), committed["seed"])
    dev, test = set(halves["dev"]), set(halves["test"])
    assert not dev & test and dev | test == set(range(len(dataset.questions)))
    assert abs(len(dev) - len(test)) <= 1
    picked = doc_qa_data.sample_questions(dataset, 40, seed=3, split="test")
    assert len(picked) == 40 and {q.index for q in picked} <= test


def test_a_split_of_another_data_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    data = write_qa(tmp_path / "qa.jsonl")
    result = run_bench("doc-qa", "--mode", "ceiling", "--data", data, "--split", "dev", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "--split all" in result.stderr and "Traceback" not in result.output
