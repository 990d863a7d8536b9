"""A competent deterministic nested key-value policy for the fake LLM server.

It reads only the request it receives: the question (for the first key), the function results and
the summary in the system message (for `key = K, value = V` lines) and its own earlier calls. Asked for a
summary, it keeps the pairs the evicted messages hold, as a summariser told to keep the task's state
does. It searches the current key, follows the value, and answers when a search for the current value
shows it only as a value, never as a key.
"""

from __future__ import annotations

import json
import re
from typing import Any

from testkit.fake_llm import last_tool_results, text_response, tool_call_response, wants_function_call

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PAIR = re.compile(rf"key = ({UUID}), value = ({UUID})")


def previous_searches(body: dict[str, Any]) -> list[tuple[str, int]]:
    """(query, page) of every archival_memory_search this conversation made, in tools or JSON mode."""
    found = []
    for message in body["messages"]:
        if message["role"] != "assistant":
            continue
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        content = message.get("content") or ""
        if not calls and content.strip().startswith("{"):
            try:
                parsed = json.loads(content)
                calls = [(parsed["function"], json.dumps(parsed.get("arguments", {})))]
            except (ValueError, KeyError, TypeError):
                pass
        for name, arguments in calls:
            if name == "archival_memory_search":
                args = json.loads(arguments)
                found.append((args["query"], int(args.get("page") or 0)))
    return found


def nested_kv_policy(body: dict[str, Any]) -> dict[str, Any]:
    if not wants_function_call(body):  # the summariser: keep the pairs found, the state of the task
        quoted = body["messages"][-1]["content"]
        found = dict.fromkeys(f"key = {k}, value = {v}" for k, v in PAIR.findall(quoted.replace('\\"', '"')))
        return text_response("Summary: pairs found so far: " + "; ".join(found) if found else "Summary: none yet.")
    question = next(m["content"] for m in body["messages"] if m["role"] == "user" and re.search(UUID, m["content"]))
    current = re.search(UUID, question).group(0)
    pairs: dict[str, str] = dict(PAIR.findall(body["messages"][0]["content"]))  # the summary, after eviction
    results = last_tool_results(body)
    for result in results:
        pairs.update(PAIR.findall(result))
    seen = set()
    while current in pairs and current not in seen:
        seen.add(current)
        current = pairs[current]
    searches = previous_searches(body)
    searched_pages = [page for query, page in searches if query == current]
    if not searched_pages:
        return tool_call_response("archival_memory_search", {"query": current, "request_heartbeat": True},
                                  content=f"I need the value of {current}.")
    return tool_call_response("send_message", {"message": current},
                              content=f"{current} appears only as a value: it is the final answer.")
