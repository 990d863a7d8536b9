"""What a `docqa bench` run was asked to do: one dataclass per benchmark (the report reads them too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docqa.settings import Settings


@dataclass
class NestedKVConfig:
    levels: list[int]
    samples: int
    mode: str
    out: Path
    data_dir: Path
    settings: Settings  # store_dir (default out/store), context_window, and the LLM for agent/baseline
    progress: bool = True
    scoring: str = "substring"  # which rule `correct` follows; both are recorded


@dataclass
class DocQAConfig:
    data: Path
    questions: int | None  # None = all
    seed: int
    mode: str
    ks: list[int]
    out: Path
    settings: Settings  # store_dir (default out/store), context_window, the LLM
    judge_model: str | None = None
    prompt_style: str = "paper"
    progress: bool = True
    scoring: str = "substring"  # which verdict `accuracy` reports; both are recorded
    split: str = "all"  # which half of the committed dev/test split to sample from
