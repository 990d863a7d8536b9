"""What the `docqa` command sets up in its own process, and the library leaves alone in its callers'."""

from __future__ import annotations

import os
from pathlib import Path

# Nothing may download weights at run time: fail fast and clearly instead of waiting on a network call.
# OpenMP's default busy-waiting made torch 10-20x slower whenever another process competed for the cores
# (measured here: 20 single-text encodes took 18 s with 2 spinning threads, 0.4 s with PASSIVE waits); it
# is read once, when torch is imported, so this must run before anything imports torch.
ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def configure_process() -> None:
    """Set docqa's process defaults (values already in the environment win), let hybrid searches tune torch's
    threads, and keep the model cache in DOCQA_CACHE_DIR when that is set."""
    from docqa.archive.fusion import allow_thread_tuning
    from docqa.embeddings.cache import use_cache_dir

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    allow_thread_tuning()
    if os.environ.get("DOCQA_CACHE_DIR"):
        use_cache_dir(Path(os.environ["DOCQA_CACHE_DIR"]))
