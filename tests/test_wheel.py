"""docqa as a user installs it: a wheel, not this checkout. `docqa bench` must find its evaluation data in
the installed package (it once found it through the source tree's parents)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN_INSTALLED = """
import sys
target = sys.argv[1]
import docqa
assert docqa.__file__.startswith(target), f"docqa imported from {docqa.__file__}, not the wheel in {target}"
from docqa.cli.main import main
sys.argv = ["docqa", *sys.argv[2:]]
main()
"""


def test_bench_ceiling_runs_from_a_wheel_install_in_another_directory(tmp_path: Path) -> None:
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600,
                           check=False)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("docqa-*.whl"))
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQA_")} | {"PYTHONPATH": str(target)}
    out = elsewhere / "out"
    run = subprocess.run([sys.executable, "-c", RUN_INSTALLED, str(target), "bench", "nested-kv", "--mode",
                          "ceiling", "--out", str(out)], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=900, check=False)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "accuracy overall: 100.0%" in run.stdout, run.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "ceiling" and summary["levels"], summary
