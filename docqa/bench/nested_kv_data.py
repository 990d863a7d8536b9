"""The nested key-value data: the paper's 140 UUID pairs and orderings, its samples, prompts and cuts."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from docqa.bench.common import BenchError, estimate_uuid_tokens

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data" / "nested_kv"
RECORDS_FILE = "kv-retrieval-140_keys.first.jsonl.gz"
MAX_LEVEL = 5
# Tokens the baseline keeps free of pairs: the answer (a UUID is about 40 tokens) and the chat template's frame.
KV_ANSWER_RESERVE = 256
# The paper's texts, verbatim from MemGPT paper_experiments/nested_kv_task/nested_kv.py.
NESTED_PERSONA = (
    "You are MemGPT DOC-QA bot. Your job is to answer questions about documents that are stored in your archival "
    "memory. The answer to the users question will ALWAYS be in your archival memory, so remember to keep searching "
    "if you can't find the answer. DO NOT STOP SEARCHING UNTIL YOU VERIFY THAT THE VALUE IS NOT A KEY. Do not stop "
    "making nested lookups until this condition is met."
)
NESTED_HUMAN = "The user will ask you questions about documents. Answer them to the best of your ability."


def agent_prompt(query_key: str) -> str:
    """The paper's first user message to MemGPT for the nested task."""
    return (
        "I've given you a list of key-value pairs which you can find in your archival memory, all keys and values "
        "are 128-bit UUIDs, and your task is to return the value associated with the specified key. "
        "If a value itself is also a key, return the value of that key (do a nested lookup). "
        "For example, if the value of 'x' is 'y', but 'y' is also a key, return the value of key 'y'. "
        f"Your task is to provide the value for the following key: {query_key}. "
        "Answer only with the value, nothing else."
    )


def baseline_prompt(query_key: str, pairs: list[tuple[str, str]]) -> str:
    """The paper's fixed-context prompt: every pair as JSON, then the question."""
    prompt = (
        "Below is a JSON object containing key-value pairings, all keys and values are 128-bit UUIDs, and your task "
        "is to return the value associated with the specified key. "
        "If a value itself is also a key, return the value of that key (do a nested lookup). "
        "For example, if the value of 'x' is 'y', but 'y' is also a key, return the value of key 'y'."
    )
    data_string = ",\n".join(f'"{k}": "{v}"' for k, v in pairs)
    prompt += f"\n\nJSON data: {{\n{data_string}\n}}"
    prompt += (f'\n\nYour task is to provide the value for the following key: "{query_key}". '
               "Answer only with the value, nothing else.")
    return prompt


def fit_pairs(query_key: str, pairs: list[tuple[str, str]], context_window: int) -> list[tuple[str, str]]:
    """The pairs the baseline prompt keeps in `context_window` tokens: the question always, then as many pairs
    as fit, in their order, the rest dropped (the prompt is cut at its end, before the question, never inside
    a pair). Tokens are counted by `estimate_uuid_tokens`, an upper bound for UUID text."""
    budget = context_window - KV_ANSWER_RESERVE - estimate_uuid_tokens(baseline_prompt(query_key, []))
    kept, used = [], 0
    for key, value in pairs:
        cost = estimate_uuid_tokens(f'"{key}": "{value}",\n')
        if used + cost > budget:
            break
        kept.append((key, value))
        used += cost
    return kept


def gold_pairs(sample: Sample) -> list[tuple[str, str]]:
    """The pairs a solver must read: one per key of the chain."""
    values = dict(sample.pairs)
    return [(key, values[key]) for key in sample.chain]


def passage(key: str, value: str) -> str:
    """One archival passage, phrased as the paper inserted it."""
    return f"Key-value pair: key = {key}, value = {value}"


# -- samples ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    level: int
    index: int
    query_key: str
    expected: str
    pairs: list[tuple[str, str]]  # all 140, original order, values overwritten along the chain
    chain: list[str] = field(default_factory=list)  # the keys a solver must look up, in order


def load_records(data_dir: Path) -> list[tuple[str, str]]:
    path = data_dir / RECORDS_FILE
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            record = json.loads(handle.readline())
        return [(str(k), str(v)) for k, v in record["ordered_kv_records"]]
    except FileNotFoundError:
        raise BenchError(f"no {RECORDS_FILE} in {data_dir}: pass --data-dir pointing at the nested_kv data "
                         "(see docqa/bench/data/SOURCES.md)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"cannot read {path} ({type(exc).__name__}): restore it from the repository") from None


def load_orderings(data_dir: Path, level: int) -> list[list[int]]:
    path = data_dir / f"random_orderings_100_samples_140_indices_{level + 1}_levels.jsonl"
    try:
        return [[int(i) for i in json.loads(line)] for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise BenchError(f"no orderings file for nesting level {level} ({path.name}) in {data_dir}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise BenchError(f"cannot read {path} ({type(exc).__name__}): restore it from the repository") from None


def build_sample(records: list[tuple[str, str]], indices: list[int], level: int, index: int) -> Sample:
    """Overwrite values along `indices` as the paper's create_nested_kv_data did, and find the answer."""
    kv = OrderedDict(records)
    keys = list(kv)
    for current, following in itertools.pairwise(indices):
        kv[keys[current]] = keys[following]
    query = keys[indices[0]]
    chain, value = [query], kv[query]
    while value in kv and value not in chain:  # the paper's get_nested_key, guarded against a cycle
        chain.append(value)
        value = kv[value]
    return Sample(level, index, query, value, list(kv.items()), chain)


def load_samples(data_dir: Path, levels: list[int], samples: int) -> list[Sample]:
    records = load_records(data_dir)
    planned = []
    for level in levels:
        orderings = load_orderings(data_dir, level)
        if samples > len(orderings):
            raise BenchError(f"--samples {samples} is more than the {len(orderings)} orderings for level {level}")
        planned += [build_sample(records, orderings[s], level, s) for s in range(samples)]
    return planned
