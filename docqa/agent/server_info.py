"""What an OpenAI-compatible LLM server says about itself: the models it serves and the context window it runs.

    info = probe_server("http://localhost:8080/v1", model=None, api_key=None)
    model = choose_model(info, base_url)            # the only model, or ServerInfoError naming the choices
    window = effective_context_window(8192, info)   # the smaller of the user's window and the server's

`probe_server` asks the standard `GET {base_url}/models` first, then (unless the host is a known hosted API)
the native endpoints of the common self-hosted servers, and stops at the first that states the window the
server *runs*. A model's trained maximum is never taken for that window: servers routinely run less (llama.cpp
`-c`, Ollama's `num_ctx`, LM Studio's load setting), and a prompt sized to the trained maximum is cut or refused.
Where only the trained maximum is known, it goes into a note instead.

Fields read, and where they are documented:

- `GET {base_url}/models` (OpenAI list): `data[].id`.
  - vLLM: `data[].max_model_len` (the served `--max-model-len`; vLLM's `show_available_models` sets it on every
    served name's ModelCard; LoRA cards carry only `root`, the base model's id). SGLang sends the same field.
  - llama.cpp `llama-server`: `data[].meta` (its `model_meta()`: `n_ctx_train`, the *trained* context, and in
    newer builds `n_ctx`, the allocated one). Only `meta.n_ctx` is taken; `n_ctx_train` becomes a note.
- llama.cpp `GET {root}/props` (tools/server/README.md, "GET /props"): `default_generation_settings.n_ctx`, the
  context of one slot, which is what one request gets: with `--parallel N` and no unified KV cache the server
  gives each slot `-c / N` (ggml-org/llama.cpp PR #17767, issue #11681), and this field already is that share,
  so it is not divided again by `total_slots`. A top-level `n_ctx` (seen in some builds and wrappers, not in the
  upstream README) is the fallback. `?model=` is sent because a router-mode server answers a bare `/props` with
  a placeholder `n_ctx` of 0; a single-model server ignores the parameter.
- Ollama `GET {root}/api/ps` (docs.ollama.com/api/ps): `models[].context_length`, the context the loaded model
  was allocated (newer versions only). `POST {root}/api/show` (docs/api.md, "Show Model Information"):
  `parameters`, text lines such as `num_ctx 4096`, the window Ollama serves the model with when set; otherwise
  it serves its default (2048 in older versions, 4096 or VRAM-based in newer, or `OLLAMA_CONTEXT_LENGTH`),
  which the API does not state. `model_info["<arch>.context_length"]` is the GGUF's trained maximum: a note.
- LM Studio `GET {root}/api/v0/models` (lmstudio-ai/docs 1_developer/2_rest/endpoints.mdx): `data[].id`,
  `state`, `max_context_length` (trained maximum: a note) and, for a loaded model, `loaded_context_length`
  (what LM Studio allocated; LM Studio >= 0.3.6). `GET {root}/api/v1/models` (LM Studio >= 0.4,
  1_developer/2_rest/list.md): `models[].key`, `models[].loaded_instances[].config.context_length`.

`{root}` is the base URL without a trailing `/v1`. Every request is bounded by `timeout`; the whole probe by a
budget of twice that, and probing stops at the first timeout or refused connection, so a server that accepts
connections and never answers costs about one `timeout`. Nothing here raises for a server's behaviour: a probe
that fails or says nothing becomes one line of `notes` (for --trace), which never holds the API key.
This module reads no environment variable (the HTTP client is built with `trust_env=False`, so no proxy
settings either).
"""

from __future__ import annotations

import time

from docqa.agent.server_probes import MAX_LISTED, Probe, ServerInfo, display_url, path_of

__all__ = ["ServerInfo", "ServerInfoError", "choose_model", "effective_context_window", "probe_server"]


class ServerInfoError(ValueError):
    """The model cannot be chosen from what the server lists; the message is one line saying what to pass."""


def probe_server(base_url: str, model: str | None, api_key: str | None, timeout: float = 3.0) -> ServerInfo:
    """Ask the server at `base_url` (an OpenAI-style base, usually ending in /v1) which models it serves and
    what context window it runs `model` with (or its only model, when `model` is None).

    Never raises for anything the server does; see the module docstring for what is read and the time bound.
    """
    start = time.monotonic()
    timeout = max(float(timeout), 0.001)
    probe: Probe | None = None
    try:
        probe = Probe(base_url, api_key, timeout, deadline=start + 2 * timeout)
        return probe.run(model)
    except Exception as exc:  # noqa: BLE001 - a bug here must not stop docqa: the user's settings still stand
        if probe is None:
            return ServerInfo(notes=[f"nothing probed: {type(exc).__name__} on the base URL"])
        probe.note(f"probe stopped by an unexpected {type(exc).__name__}")
        return ServerInfo(models=list(probe.models), notes=probe.scrubbed_notes())
    finally:
        if probe is not None:
            probe.close()


def choose_model(info: ServerInfo, base_url: str) -> str:
    """The model to use when the user gave a base URL but no --model: the server's only model.

    Raises ServerInfoError when the server lists several models (the message names them) or none.
    """
    where = display_url(base_url)
    unique = list(dict.fromkeys(info.models))
    if len(unique) == 1:
        return unique[0]
    if not unique:
        raise ServerInfoError(f"the server at {where} lists no models at {path_of(base_url)}/models: pass --model")
    shown = ", ".join(unique[:MAX_LISTED])
    if len(unique) > MAX_LISTED:
        shown += f", ... ({len(unique) - MAX_LISTED} more)"
    raise ServerInfoError(f"the server at {where} serves {len(unique)} models: {shown}: pass --model NAME")


def effective_context_window(requested: int, info: ServerInfo) -> int:
    """The window to plan with: the user's (or the default) capped by the server's, when the server said one."""
    if info.context_window is not None and info.context_window < requested:
        return info.context_window
    return requested
