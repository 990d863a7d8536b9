"""docqa.agent.server_info against real HTTP servers on localhost, one per server flavour.

Each fake answers only the routes its real counterpart has (everything else is a 404, as on the real
servers), with the fields the real one sends, so the probe's choice of field and its stopping are tested.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest

from docqa.agent import server_probes
from testkit.serving import LocalServer
from docqa.agent.server_info import ServerInfo, ServerInfoError, choose_model, effective_context_window, probe_server

KEY = "sk-test-secret-0123456789"
HANG_SECONDS = 5.0

# A route answers (status, content type, body); a body that is not bytes/str is sent as JSON.
Answer = tuple[int, str, Any]
Route = Callable[[dict[str, Any]], Answer] | Answer | str  # "hang": accept the request, never answer


def ok(body: Any) -> Answer:
    return 200, "application/json", body


class FlavourServer(LocalServer):
    """An HTTP server on 127.0.0.1 answering `routes` {("GET", "/path"): answer}; `.requests` records each request."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        super().__init__()
        self.routes = routes
        self.requests: list[dict[str, Any]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def paths(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]


def _handler_for(server: FlavourServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def _route(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            body = json.loads(raw) if raw else None
            request = {"method": method, "path": parts.path, "query": parts.query, "body": body,
                       "authorization": self.headers.get("Authorization")}
            server.requests.append(request)
            route = server.routes.get((method, parts.path.rstrip("/") or "/"))
            if route is None:
                answer: Answer = 404, "application/json", {"error": f"no route {method} {parts.path}"}
            elif route == "hang":
                server.stopping.wait(HANG_SECONDS)
                self.close_connection = True
                return
            elif route == "trickle":  # a 200 whose body arrives a byte every 0.2 s: no read ever times out
                self._trickle()
                return
            elif callable(route):
                answer = route(request)
            else:
                answer = route  # type: ignore[assignment]
            status, kind, payload = answer
            data = payload if isinstance(payload, bytes) else (
                payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _trickle(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    if server.stopping.wait(0.2):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


def model_list(*entries: dict[str, Any]) -> Answer:
    return ok({"object": "list", "data": [{"object": "model", "created": 0, **e} for e in entries]})


def assert_key_not_in_notes(info: ServerInfo) -> None:
    assert info.notes, "expected notes"
    for line in info.notes:
        assert KEY not in line


# -- vLLM ---------------------------------------------------------------------------------------------------

VLLM_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/models"): model_list(
        {"id": "meta-llama/Llama-3.1-8B-Instruct", "owned_by": "vllm", "root": "meta-llama/Llama-3.1-8B-Instruct",
         "parent": None, "max_model_len": 32768},
        {"id": "sql-lora", "owned_by": "vllm", "root": "meta-llama/Llama-3.1-8B-Instruct", "parent": None}),
}


def test_vllm_window_is_max_model_len_and_nothing_else_is_asked() -> None:
    with FlavourServer(VLLM_ROUTES) as server:
        info = probe_server(server.base_url, "meta-llama/Llama-3.1-8B-Instruct", KEY)
        assert server.paths() == ["GET /v1/models"]  # found: stop probing
        assert all(r["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert info.models == ["meta-llama/Llama-3.1-8B-Instruct", "sql-lora"]
    assert info.context_window == 32768
    assert info.window_source is not None and "max_model_len" in info.window_source


def test_vllm_lora_card_takes_its_base_models_window() -> None:
    with FlavourServer(VLLM_ROUTES) as server:
        info = probe_server(server.base_url, "sql-lora", None)
        assert all(r["authorization"] is None for r in server.requests)  # no key, no header
    assert info.context_window == 32768


def test_vllm_several_models_and_none_named_reads_no_window() -> None:
    with FlavourServer(VLLM_ROUTES) as server:
        info = probe_server(server.base_url, None, None)
    assert info.context_window is None
    assert len(info.models) == 2
    with pytest.raises(ServerInfoError):
        choose_model(info, server.base_url)


# -- llama.cpp ----------------------------------------------------------------------------------------------

LLAMA_MODELS = model_list({"id": "qwen3-8b-q4_k_m.gguf", "owned_by": "llamacpp",
                           "meta": {"vocab_type": 2, "n_vocab": 151936, "n_ctx_train": 40960, "n_embd": 4096,
                                    "n_params": 8190735360, "size": 5027783488}})
LLAMA_PROPS = ok({"default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": 4096, "is_processing": False,
                                                  "params": {"n_predict": -1, "temperature": 0.8}},
                  "total_slots": 4, "model_path": "/models/qwen3-8b-q4_k_m.gguf", "chat_template": "{{ x }}",
                  "build_info": "b6000-abcdef"})


def test_llama_cpp_window_is_the_per_slot_n_ctx_from_props_not_n_ctx_train() -> None:
    routes: dict[tuple[str, str], Route] = {("GET", "/v1/models"): LLAMA_MODELS, ("GET", "/props"): LLAMA_PROPS}
    with FlavourServer(routes) as server:
        info = probe_server(server.base_url, None, KEY)
        assert server.paths() == ["GET /v1/models", "GET /props"]
        assert server.requests[1]["query"] == "model=qwen3-8b-q4_k_m.gguf"  # router mode needs ?model=
    assert info.models == ["qwen3-8b-q4_k_m.gguf"]
    assert info.context_window == 4096  # the slot's share, used as is: not 40960, not 4096 / 4
    assert info.window_source is not None and "/props" in info.window_source and "total_slots 4" in info.window_source
    assert any("n_ctx_train 40960" in line for line in info.notes)
    assert_key_not_in_notes(info)


def test_llama_cpp_meta_n_ctx_in_models_is_used_when_present() -> None:
    newer = model_list({"id": "m.gguf", "owned_by": "llamacpp", "meta": {"n_ctx": 8192, "n_ctx_train": 40960}})
    with FlavourServer({("GET", "/v1/models"): newer, ("GET", "/props"): LLAMA_PROPS}) as server:
        info = probe_server(server.base_url, "m.gguf", None)
        assert server.paths() == ["GET /v1/models"]
    assert info.context_window == 8192
    assert info.window_source is not None and "meta.n_ctx" in info.window_source


def test_llama_cpp_router_placeholder_n_ctx_zero_is_no_window() -> None:
    placeholder = ok({"default_generation_settings": {"n_ctx": 0}, "total_slots": 1, "role": "router"})
    with FlavourServer({("GET", "/v1/models"): LLAMA_MODELS, ("GET", "/props"): placeholder}) as server:
        info = probe_server(server.base_url, None, None)
    assert info.context_window is None
    assert any("/props" in line for line in info.notes)


def test_llama_cpp_base_url_without_v1_still_finds_props() -> None:
    routes: dict[tuple[str, str], Route] = {("GET", "/models"): LLAMA_MODELS, ("GET", "/props"): LLAMA_PROPS}
    with FlavourServer(routes) as server:
        info = probe_server(server.root + "/", None, None)
    assert info.models == ["qwen3-8b-q4_k_m.gguf"]
    assert info.context_window == 4096


# -- Ollama -------------------------------------------------------------------------------------------------

OLLAMA_MODELS = model_list({"id": "llama3.2:latest", "owned_by": "library"}, {"id": "qwen3:8b", "owned_by": "library"})
SHOW_INFO = {"general.architecture": "llama", "llama.context_length": 131072, "llama.embedding_length": 3072}


def ollama_routes(ps_models: list[dict[str, Any]], parameters: str) -> dict[tuple[str, str], Route]:
    def show(request: dict[str, Any]) -> Answer:
        if request["body"].get("model") not in ("llama3.2", "llama3.2:latest"):
            return 404, "application/json", {"error": "model not found"}
        return ok({"modelfile": "FROM /blobs/sha256-x", "parameters": parameters, "template": "{{ .Prompt }}",
                   "details": {"family": "llama"}, "model_info": SHOW_INFO})

    return {("GET", "/v1/models"): OLLAMA_MODELS, ("GET", "/api/ps"): ok({"models": ps_models}),
            ("POST", "/api/show"): show}


def test_ollama_prefers_the_loaded_context_length_of_api_ps() -> None:
    loaded = [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1, "context_length": 8192}]
    with FlavourServer(ollama_routes(loaded, 'num_ctx                        4096\nstop "<|eot_id|>"')) as server:
        info = probe_server(server.base_url, "llama3.2", KEY)  # no tag: Ollama's implicit :latest
        assert "POST /api/show" not in server.paths()
    assert info.context_window == 8192
    assert info.window_source == "Ollama /api/ps context_length (loaded model)"


def test_ollama_not_loaded_uses_num_ctx_from_api_show() -> None:
    with FlavourServer(ollama_routes([], 'num_keep                       24\nnum_ctx                        '
                                         '16384\nstop                           "<|eot_id|>"')) as server:
        info = probe_server(server.base_url, "llama3.2:latest", None)
        show = next(r for r in server.requests if r["path"] == "/api/show")
        assert show["body"]["model"] == "llama3.2:latest"
    assert info.context_window == 16384
    assert info.window_source == "Ollama /api/show num_ctx"
    assert any("not loaded" in line for line in info.notes)


def test_ollama_trained_maximum_alone_is_not_claimed() -> None:
    older_ps = [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1}]  # no context_length field
    with FlavourServer(ollama_routes(older_ps, 'stop                           "<|eot_id|>"')) as server:
        info = probe_server(server.base_url, "llama3.2", KEY)
    assert info.context_window is None  # 131072 is llama.context_length, not what Ollama serves
    assert info.models == ["llama3.2:latest", "qwen3:8b"]
    assert any("131072" in line and "trained" in line for line in info.notes)
    assert_key_not_in_notes(info)


# -- LM Studio ----------------------------------------------------------------------------------------------

LMS_MODELS = model_list({"id": "qwen/qwen3-8b", "owned_by": "organization_owner"},
                        {"id": "text-embedding-nomic-embed-text-v1.5", "owned_by": "organization_owner"})


def lms_v0(state: str, loaded: int | None) -> Answer:
    entry: dict[str, Any] = {"id": "qwen/qwen3-8b", "object": "model", "type": "llm", "arch": "qwen3",
                             "state": state, "max_context_length": 131072}
    if loaded is not None:
        entry["loaded_context_length"] = loaded
    return ok({"object": "list", "data": [
        {"id": "text-embedding-nomic-embed-text-v1.5", "type": "embeddings", "state": "not-loaded",
         "max_context_length": 2048}, entry]})


def test_lmstudio_uses_loaded_context_length_not_max_context_length() -> None:
    routes: dict[tuple[str, str], Route] = {("GET", "/v1/models"): LMS_MODELS,
                                            ("GET", "/api/v0/models"): lms_v0("loaded", 16384)}
    with FlavourServer(routes) as server:
        info = probe_server(server.base_url, "qwen/qwen3-8b", KEY)
        assert server.paths()[-1] == "GET /api/v0/models"
    assert info.context_window == 16384
    assert info.window_source == "LM Studio loaded_context_length in /api/v0/models"


def test_lmstudio_not_loaded_claims_no_window() -> None:
    routes: dict[tuple[str, str], Route] = {("GET", "/v1/models"): LMS_MODELS,
                                            ("GET", "/api/v0/models"): lms_v0("not-loaded", None)}
    with FlavourServer(routes) as server:
        info = probe_server(server.base_url, "qwen/qwen3-8b", None)
    assert info.context_window is None
    assert any("max_context_length 131072" in line for line in info.notes)


def test_lmstudio_v1_api_loaded_instance_context_length() -> None:
    v1 = ok({"models": [{"type": "llm", "key": "qwen/qwen3-8b", "max_context_length": 131072,
                         "loaded_instances": [{"id": "qwen/qwen3-8b", "config": {"context_length": 4096}}]}]})
    with FlavourServer({("GET", "/v1/models"): LMS_MODELS, ("GET", "/api/v1/models"): v1}) as server:
        info = probe_server(server.base_url, "qwen/qwen3-8b", None)
    assert info.context_window == 4096
    assert info.window_source is not None and "/api/v1/models" in info.window_source


# -- plain, hosted, broken, hanging -------------------------------------------------------------------------


def test_plain_openai_like_server_lists_models_and_says_nothing_else() -> None:
    with FlavourServer({("GET", "/v1/models"): model_list({"id": "gpt-x", "owned_by": "someone"})}) as server:
        info = probe_server(server.base_url, None, KEY)
    assert info == ServerInfo(models=["gpt-x"], context_window=None, window_source=None, notes=info.notes)
    assert any("HTTP 404" in line for line in info.notes)
    assert_key_not_in_notes(info)
    assert choose_model(info, server.base_url) == "gpt-x"


def test_hosted_api_is_asked_only_for_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_probes, "HOSTED_APIS", ("127.0.0.1",))  # stands for api.openai.com
    routes: dict[tuple[str, str], Route] = {("GET", "/v1/models"): model_list({"id": "gpt-x"}),
                                            ("GET", "/props"): LLAMA_PROPS}
    with FlavourServer(routes) as server:
        info = probe_server(server.base_url, "gpt-x", KEY)
        assert server.paths() == ["GET /v1/models"]
    assert info.context_window is None


def test_garbage_and_html_never_raise_and_claim_nothing() -> None:
    html: Answer = 200, "text/html", "<html><body>Welcome to nginx!</body></html>"
    routes: dict[tuple[str, str], Route] = {
        ("GET", "/v1/models"): html, ("GET", "/props"): html, ("GET", "/api/ps"): (200, "application/json", b"\xff{"),
        ("POST", "/api/show"): html, ("GET", "/api/v0/models"): html, ("GET", "/api/v1/models"): html}
    with FlavourServer(routes) as server:
        info = probe_server(server.base_url, "some-model", KEY)
    assert info.models == [] and info.context_window is None
    assert any("not JSON (text/html)" in line for line in info.notes)
    assert_key_not_in_notes(info)


@pytest.mark.parametrize("models, props", [
    (ok({"data": "not a list"}), ok({"default_generation_settings": [1, 2], "n_ctx": "4096"})),
    (ok([1, 2, 3]), ok({"default_generation_settings": {"n_ctx": True}, "n_ctx": -5})),
    (ok({"data": [{"id": 7}, "x", {"id": ""}, {"id": "ok", "max_model_len": "32768", "meta": [1]}]}),
     ok({"default_generation_settings": {"n_ctx": 4096.5}})),
])
def test_wrong_shapes_are_notes_not_errors(models: Answer, props: Answer) -> None:
    with FlavourServer({("GET", "/v1/models"): models, ("GET", "/props"): props}) as server:
        info = probe_server(server.base_url, None, None)
    assert info.context_window is None
    assert info.models in ([], ["ok"])


def test_hanging_server_returns_in_bounded_time() -> None:
    # Accepts the TCP connection (the kernel completes the handshake on a listening socket) and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        started = time.monotonic()
        info = probe_server(base_url, None, KEY, timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 10
    assert info.models == [] and info.context_window is None
    assert any("no answer" in line for line in info.notes)
    assert_key_not_in_notes(info)


def test_server_hanging_on_one_endpoint_keeps_what_it_learnt() -> None:
    routes: dict[tuple[str, str], Route] = {("GET", "/v1/models"): LLAMA_MODELS, ("GET", "/props"): "hang"}
    with FlavourServer(routes) as server:
        started = time.monotonic()
        info = probe_server(server.base_url, None, None, timeout=0.5)
        elapsed = time.monotonic() - started
        assert "GET /api/ps" not in server.paths()  # probing stopped at the first timeout
    assert elapsed < 10
    assert info.models == ["qwen3-8b-q4_k_m.gguf"] and info.context_window is None
    assert any("/props" in line and "no answer" in line for line in info.notes)


def test_server_trickling_bytes_is_cut_off_by_the_probe_budget() -> None:
    with FlavourServer({("GET", "/v1/models"): "trickle"}) as server:
        started = time.monotonic()
        info = probe_server(server.base_url, None, None, timeout=0.5)
        elapsed = time.monotonic() - started
        assert server.paths() == ["GET /v1/models"]
    assert elapsed < 10
    assert info.models == [] and any("probe budget" in line for line in info.notes)


def test_refused_connection_is_a_note() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the probe: nothing listens there
    info = probe_server(f"http://127.0.0.1:{port}/v1", None, KEY, timeout=0.5)
    assert info.models == [] and info.context_window is None
    assert len(info.notes) == 1 and "cannot connect" in info.notes[0]


def test_error_bodies_echoing_the_key_stay_out_of_notes() -> None:
    leaky: Answer = 401, "application/json", {"error": f"invalid key {KEY}"}
    with FlavourServer({("GET", "/v1/models"): leaky, ("GET", "/props"): leaky}) as server:
        info = probe_server(server.base_url, None, KEY)
    assert any("HTTP 401" in line for line in info.notes)
    assert_key_not_in_notes(info)


# -- choose_model and effective_context_window --------------------------------------------------------------


def test_choose_model_one_several_none() -> None:
    url = "http://user:pw@localhost:8000/v1?token=abc"
    assert choose_model(ServerInfo(models=["only"]), url) == "only"
    with pytest.raises(ServerInfoError) as several:
        choose_model(ServerInfo(models=["a", "b", "c"]), url)
    message = str(several.value)
    assert message == "the server at http://localhost:8000/v1 serves 3 models: a, b, c: pass --model NAME"
    with pytest.raises(ValueError, match=r"lists no models at /v1/models: pass --model$") as none:
        choose_model(ServerInfo(), url)
    for text in (message, str(none.value)):
        assert "pw" not in text and "token" not in text and "\n" not in text


def test_choose_model_shortens_a_long_list() -> None:
    with pytest.raises(ServerInfoError) as many:
        choose_model(ServerInfo(models=[f"m{i}" for i in range(50)]), "https://openrouter.ai/api/v1")
    assert "serves 50 models: m0, m1," in str(many.value) and "(30 more)" in str(many.value)


def test_effective_context_window_is_the_smaller() -> None:
    assert effective_context_window(8192, ServerInfo(context_window=4096)) == 4096
    assert effective_context_window(8192, ServerInfo(context_window=32768)) == 8192
    assert effective_context_window(8192, ServerInfo()) == 8192
