"""The doc-QA data: NaturalQuestions-Open in lost-in-the-middle's format, and its fixed dev/test split."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from docqa.bench.common import BenchError

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "nq_open" / "nq-open-oracle.jsonl.gz"
# The fixed dev/test halves of the shipped questions (make_split, seed 14): tune on dev, report on test.
SPLIT_FILE = DEFAULT_DATA.parent / "nq-open-oracle.split.json"
SPLIT_SEED = 14
SPLITS = ("all", "dev", "test")
DEFAULT_KS = (1, 2, 5, 10, 20, 50, 100, 200)


# -- data -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Passage:
    id: int
    title: str
    text: str

    @property
    def content(self) -> str:
        """The text archival memory holds for this passage (form feeds would split it into pages)."""
        return f"{self.title}\n\n{self.text}".replace("\f", " ")


@dataclass(frozen=True)
class Question:
    index: int  # line number in the data file, 0-based
    question: str
    answers: list[str]
    gold: list[int]  # passage ids of the gold passage(s): isgold, else hasanswer


@dataclass(frozen=True)
class Dataset:
    path: Path
    fingerprint: str
    questions: list[Question]
    passages: list[Passage]


def load_dataset(path: Path) -> Dataset:
    """Read a lost-in-the-middle QA file (gzip or plain JSONL: question, answers, ctxs[title, text, isgold])."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"no such data file: {path}; pass --data with a lost-in-the-middle QA file") from None
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {path} ({type(exc).__name__}): expected gzip or plain UTF-8 JSONL") from None
    ids: dict[tuple[str, str], int] = {}
    passages: list[Passage] = []
    questions: list[Question] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            contexts = item["ctxs"]
            gold: list[int] = []
            with_answer: list[int] = []
            for ctx in contexts:
                key = (str(ctx.get("title") or ""), str(ctx["text"]))
                if key not in ids:
                    ids[key] = len(passages)
                    passages.append(Passage(len(passages), *key))
                (gold if ctx.get("isgold") else with_answer if ctx.get("hasanswer") else []).append(ids[key])
            answers = [str(a) for a in item["answers"]]
            questions.append(Question(len(questions), str(item["question"]), answers,
                                      list(dict.fromkeys(gold or with_answer))))
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"{path}, line {number}: not a QA record ({type(exc).__name__}: {exc}); each line needs "
                             "question, answers and ctxs [{title, text, isgold}]") from None
    if not questions:
        raise BenchError(f"{path} holds no questions")
    return Dataset(path, hashlib.sha256(raw).hexdigest()[:10], questions, passages)


def make_split(count: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Question indices 0..count-1 shuffled with `seed` and halved: dev (the smaller half when odd), test."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    half = count // 2
    return {"dev": sorted(order[:half]), "test": sorted(order[half:])}


def load_split(dataset: Dataset, path: Path = SPLIT_FILE) -> dict[str, list[int]] | None:
    """The committed dev/test split, when `dataset` is the file it was made for (same fingerprint), else None."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(split, dict) or split.get("data_fingerprint") != dataset.fingerprint:
        return None
    return {"dev": [int(i) for i in split["dev"]], "test": [int(i) for i in split["test"]]}


def split_of(dataset: Dataset) -> dict[int, str]:
    """Question index -> "dev" or "test" under the committed split, or {} for another data file."""
    split = load_split(dataset)
    return {i: half for half in ("dev", "test") for i in (split or {}).get(half, [])}


def sample_questions(dataset: Dataset, count: int | None, seed: int, split: str = "all") -> list[Question]:
    """`count` questions drawn with `seed` (in file order) from one half of the split or all, or all of them
    when count is None."""
    pool = list(dataset.questions)
    if split != "all":
        halves = load_split(dataset)
        if halves is None:
            raise BenchError(f"--split {split} needs the committed split of the shipped NQ file ({SPLIT_FILE.name}); "
                             f"{dataset.path} is another file: use --split all")
        pool = [dataset.questions[i] for i in halves[split]]
    if count is None or count >= len(pool):
        return pool
    chosen = sorted(random.Random(seed).sample(range(len(pool)), count))
    return [pool[i] for i in chosen]
