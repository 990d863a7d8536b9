"""The probes behind docqa.agent.server_info: one HTTP session that asks a server's endpoints in turn
(OpenAI /models, llama.cpp /props, Ollama /api/ps and /api/show, LM Studio /api/v0 and /api/v1), read-only.

See docqa.agent.server_info for what each field means and where it is documented."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

#: Hosts of hosted APIs that have none of the self-hosted servers' native endpoints: only /models is asked.
HOSTED_APIS = ("api.openai.com",)
#: Most bytes read from one answer (an Ollama /api/show carries template and license; llama.cpp's /props the
#: chat template): more means something else is answering.
MAX_BODY_BYTES = 4_000_000
#: Most model names a choose_model error lists.
MAX_LISTED = 20

_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ServerInfo:
    """What the server at a base URL said about itself."""

    models: list[str] = field(default_factory=list)
    """The model ids from GET {base_url}/models, in the server's order; [] if it listed none or did not answer."""
    context_window: int | None = None
    """The context window in tokens the server runs the model with, if it said; never a trained maximum."""
    window_source: str | None = None
    """Where `context_window` came from, for messages, e.g. "llama.cpp /props default_generation_settings.n_ctx"."""
    notes: list[str] = field(default_factory=list)
    """One line per probe that failed or said nothing useful, for --trace. Never holds the API key."""


# -- the probe ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised inside a request to end probing (timeout, refused connection, budget spent)."""


class Probe:
    """One probing session: an HTTP client, a deadline, the notes gathered, the models listed."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, deadline: float) -> None:
        self.base = base_url.strip().rstrip("/")
        parts = urlsplit(self.base)
        path = parts.path.rstrip("/")
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        self.root = urlunsplit((parts.scheme, parts.netloc, root_path, "", ""))
        self.base_no_query = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.host = (parts.hostname or "").lower()
        self.api_key = api_key or None
        self.timeout = timeout
        self.deadline = deadline
        self.notes: list[str] = []
        self.models: list[str] = []
        self.stopped = False
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.client: httpx.Client | None = None
        try:
            self.client = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False, trust_env=False)
        except Exception as exc:  # noqa: BLE001 - e.g. a header httpx refuses (a key with a newline)
            self.note(f"no HTTP client ({type(exc).__name__}); nothing probed")
            self.stopped = True

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def scrubbed_notes(self) -> list[str]:
        """The notes, with the key replaced wherever a server or an exception echoed it."""
        if not self.api_key:
            return list(self.notes)
        return [line.replace(self.api_key, "***") for line in self.notes]

    def info(self, window: int | None = None, source: str | None = None) -> ServerInfo:
        return ServerInfo(models=list(self.models), context_window=window, window_source=source,
                          notes=self.scrubbed_notes())

    # -- the sequence ----------------------------------------------------------------------------------

    def run(self, model: str | None) -> ServerInfo:
        if self.stopped:
            return self.info()
        if urlsplit(self.base).scheme not in ("http", "https"):
            self.note(f"base URL {display_url(self.base)} is not http(s): nothing probed")
            return self.info()
        entries = self._models()
        target = model
        if target is None and len(self.models) == 1:
            target = self.models[0]
        found = self._window_from_models(entries, target)
        if found:
            return self.info(*found)
        if self._is_hosted():
            self.note(f"{self.host} is a hosted API: its context window is not asked beyond /models")
            return self.info()
        for step in (self._llama_cpp_props, self._ollama_ps, self._ollama_show, self._lmstudio_v0,
                     self._lmstudio_v1):
            if self.stopped:
                break
            found = step(target)
            if found:
                return self.info(*found)
        return self.info()

    def _is_hosted(self) -> bool:
        return any(self.host == h or self.host.endswith("." + h) for h in HOSTED_APIS)

    # -- GET {base}/models -----------------------------------------------------------------------------

    def _models(self) -> list[dict[str, Any]]:
        label = f"GET {path_of(self.base)}/models"
        body = self._request("GET", f"{self.base_no_query}/models", label)
        if body is None:
            return []
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            self.note(f"{label}: not an OpenAI model list (no 'data' array)")
            return []
        entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]]
        self.models = list(dict.fromkeys(e["id"] for e in entries))
        if not self.models:
            self.note(f"{label}: lists no models")
        return entries

    def _window_from_models(self, entries: list[dict[str, Any]], target: str | None) -> tuple[int, str] | None:
        if not entries:
            return None
        label = f"{path_of(self.base)}/models"
        if target is None:
            self.note(f"{label}: {len(self.models)} models listed and none named: no per-model window read")
            return None
        entry = _find(entries, target, key="id")
        if entry is None:
            self.note(f"{label}: no entry with id {target!r}")
            return None
        # vLLM: a LoRA adapter's card has no max_model_len, only `root` (the base model, whose card has it).
        cards = [entry]
        root = entry.get("root")
        if isinstance(root, str) and root != entry["id"]:
            base_card = _find(entries, root, key="id")
            if base_card is not None:
                cards.append(base_card)
        for card in cards:
            n = _positive_int(card.get("max_model_len"))
            if n:
                return n, f"max_model_len (vLLM) in {label}"
        meta = entry.get("meta")
        if isinstance(meta, dict):
            n = _positive_int(meta.get("n_ctx"))
            if n:
                return n, f"llama.cpp meta.n_ctx in {label}"
            trained = _positive_int(meta.get("n_ctx_train"))
            if trained:
                self.note(f"{label}: meta.n_ctx_train {trained} is the trained context, not the served window")
        return None

    # -- llama.cpp ------------------------------------------------------------------------------------

    def _llama_cpp_props(self, target: str | None) -> tuple[int, str] | None:
        query = f"?model={quote(target, safe='')}" if target else ""
        body = self._request("GET", f"{self.root}/props{query}", "llama.cpp GET /props")
        if not isinstance(body, dict):
            if body is not None:
                self.note("llama.cpp GET /props: not a JSON object")
            return None
        settings = body.get("default_generation_settings")
        slots = _positive_int(body.get("total_slots"))
        slot_text = f", total_slots {slots}" if slots else ""
        n = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if n:
            return n, f"llama.cpp /props default_generation_settings.n_ctx (per slot{slot_text})"
        n = _positive_int(body.get("n_ctx"))
        if n:
            return n, f"llama.cpp /props n_ctx{slot_text}"
        self.note("llama.cpp GET /props: no positive default_generation_settings.n_ctx or n_ctx")
        return None

    # -- Ollama ---------------------------------------------------------------------------------------

    def _ollama_ps(self, target: str | None) -> tuple[int, str] | None:
        if target is None:
            self.note("Ollama GET /api/ps: skipped, no model named")
            return None
        body = self._request("GET", f"{self.root}/api/ps", "Ollama GET /api/ps")
        if body is None:
            return None
        loaded = body.get("models") if isinstance(body, dict) else None
        if not isinstance(loaded, list):
            self.note("Ollama GET /api/ps: no 'models' array")
            return None
        entry = _find(loaded, target, key="name") or _find(loaded, target, key="model")
        if entry is None:
            self.note(f"Ollama GET /api/ps: {target!r} is not loaded")
            return None
        n = _positive_int(entry.get("context_length"))
        if n:
            return n, "Ollama /api/ps context_length (loaded model)"
        self.note("Ollama GET /api/ps: no context_length (older Ollama)")
        return None

    def _ollama_show(self, target: str | None) -> tuple[int, str] | None:
        if target is None:
            self.note("Ollama POST /api/show: skipped, no model named")
            return None
        # "model" is the current field; "name" the one versions before 0.5 read.
        body = self._request("POST", f"{self.root}/api/show", "Ollama POST /api/show",
                             json_body={"model": target, "name": target})
        if body is None:
            return None
        if not isinstance(body, dict):
            self.note("Ollama POST /api/show: not a JSON object")
            return None
        parameters = body.get("parameters")
        if isinstance(parameters, str):
            match = _NUM_CTX.search(parameters)
            if match and int(match.group(1)) > 0:
                return int(match.group(1)), "Ollama /api/show num_ctx"
        trained = None
        info = body.get("model_info")
        if isinstance(info, dict):
            trained = next((_positive_int(v) for k, v in info.items()
                            if isinstance(k, str) and k.endswith(".context_length") and _positive_int(v)), None)
        if trained:
            self.note(f"Ollama /api/show: no num_ctx; {trained} is the model's trained maximum, not what Ollama "
                      "serves (its default or OLLAMA_CONTEXT_LENGTH): not used")
        else:
            self.note("Ollama POST /api/show: no num_ctx in parameters")
        return None

    # -- LM Studio ------------------------------------------------------------------------------------

    def _lmstudio_v0(self, target: str | None) -> tuple[int, str] | None:
        if target is None:
            self.note("LM Studio GET /api/v0/models: skipped, no model named")
            return None
        body = self._request("GET", f"{self.root}/api/v0/models", "LM Studio GET /api/v0/models")
        if body is None:
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            self.note("LM Studio GET /api/v0/models: no 'data' array")
            return None
        entry = _find(data, target, key="id")
        if entry is None:
            self.note(f"LM Studio GET /api/v0/models: no entry with id {target!r}")
            return None
        n = _positive_int(entry.get("loaded_context_length"))
        if n:
            return n, "LM Studio loaded_context_length in /api/v0/models"
        self._note_lmstudio_max("/api/v0/models", entry.get("state"), entry.get("max_context_length"))
        return None

    def _lmstudio_v1(self, target: str | None) -> tuple[int, str] | None:
        if target is None:
            return None
        body = self._request("GET", f"{self.root}/api/v1/models", "LM Studio GET /api/v1/models")
        if body is None:
            return None
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            self.note("LM Studio GET /api/v1/models: no 'models' array")
            return None
        for entry in models:
            if not isinstance(entry, dict):
                continue
            instances = [i for i in entry.get("loaded_instances") or [] if isinstance(i, dict)]
            if not (_same_model(entry.get("key"), target) or any(_same_model(i.get("id"), target) for i in instances)):
                continue
            for instance in instances:
                config = instance.get("config")
                n = _positive_int(config.get("context_length")) if isinstance(config, dict) else None
                if n:
                    return n, "LM Studio /api/v1/models loaded_instances[].config.context_length"
            self._note_lmstudio_max("/api/v1/models", "not-loaded" if not instances else None,
                                    entry.get("max_context_length"))
            return None
        self.note(f"LM Studio GET /api/v1/models: no model with key {target!r}")
        return None

    def _note_lmstudio_max(self, path: str, state: Any, maximum: Any) -> None:
        trained = _positive_int(maximum)
        status = f"state {state!r}, " if isinstance(state, str) else ""
        if trained:
            self.note(f"LM Studio {path}: {status}no loaded context length; max_context_length {trained} is the "
                      "model's maximum, not what LM Studio loads it with: not used")
        else:
            self.note(f"LM Studio {path}: {status}no loaded context length")

    # -- one request ----------------------------------------------------------------------------------

    def _request(self, method: str, url: str, label: str, json_body: Any = None) -> Any:
        """The JSON of a 200 answer, or None with a note. Sets `stopped` when probing should end."""
        if self.stopped or self.client is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0.05:
            self.note(f"{label}: skipped, the {2 * self.timeout:g} s probe budget is spent")
            self.stopped = True
            return None
        limit = min(self.timeout, remaining)
        try:
            with self.client.stream(method, url, json=json_body, timeout=limit) as response:
                if response.status_code != 200:
                    self.note(f"{label}: HTTP {response.status_code}")
                    return None
                raw = self._read(response, label)
                if raw is None:
                    return None
        except _Stop:
            self.stopped = True
            return None
        except httpx.TimeoutException:
            self.note(f"{label}: no answer within {limit:.1f} s; probing stopped")
            self.stopped = True
            return None
        except httpx.ConnectError as exc:
            self.note(f"{label}: cannot connect ({_one_line(str(exc))[:120] or type(exc).__name__}); probing stopped")
            self.stopped = True
            return None
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            self.note(f"{label}: {type(exc).__name__}")
            return None
        try:
            return json.loads(raw)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both
            kind = response.headers.get("content-type", "unknown type").split(";")[0]
            self.note(f"{label}: answer is not JSON ({kind})")
            return None

    def _read(self, response: httpx.Response, label: str) -> bytes | None:
        """The body (None if too large), bounded by the deadline: a server trickling bytes cannot hold the probe."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self.note(f"{label}: answer larger than {MAX_BODY_BYTES} bytes: ignored")
                return None
            if time.monotonic() > self.deadline:
                self.note(f"{label}: answer still arriving after the {2 * self.timeout:g} s probe budget; "
                          "probing stopped")
                raise _Stop
        return b"".join(chunks)


# -- helpers ---------------------------------------------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    """A token count from JSON: a positive int (or integral float), else None. Booleans and strings are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def _same_model(name: Any, target: str) -> bool:
    """Whether two model names are the same, Ollama's implicit ':latest' tag aside."""
    if not isinstance(name, str):
        return False
    if name == target:
        return True

    def tagged(n: str) -> str:
        return n if ":" in n.rsplit("/", 1)[-1] else f"{n}:latest"

    return tagged(name) == tagged(target)


def _find(entries: list[Any], target: str, *, key: str) -> dict[str, Any] | None:
    """The entry whose `key` is `target` exactly, else the one that matches up to a ':latest' tag."""
    dicts = [e for e in entries if isinstance(e, dict)]
    exact = next((e for e in dicts if e.get(key) == target), None)
    return exact or next((e for e in dicts if _same_model(e.get(key), target)), None)


def path_of(url: str) -> str:
    try:
        return urlsplit(url.strip()).path.rstrip("/")
    except ValueError:
        return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def display_url(url: str) -> str:
    """The URL for messages: without user:password or query, which may hold secrets."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return "(an unparsable base URL)"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
