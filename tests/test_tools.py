"""The agent's function schemas are generated from typed Python functions; this pins them exactly."""

from __future__ import annotations

from typing import Any

import pytest

from docqa.agent.memory import CoreMemory, ToolError
from docqa.agent.tools import Toolbox, function_schema

EXPECTED: list[dict[str, Any]] = [{'type': 'function',
  'function': {'name': 'send_message',
               'description': 'Sends a message to the human user. This is the only way the user sees what you say; '
                              'everything else you write is your private inner monologue. Put your final answer '
                              'here, and name the sources and pages it comes from.',
               'parameters': {'properties': {'message': {'description': 'Message contents. All unicode (including '
                                                                        'emojis) are supported.',
                                                         'type': 'string'}},
                              'required': ['message'],
                              'type': 'object'}}},
 {'type': 'function',
  'function': {'name': 'archival_memory_search',
               'description': "Searches archival memory (the user's documents and what you inserted) using "
                              'semantic and exact-word search, and returns one page of results. Look at later '
                              'pages when the answer is not on this one.',
               'parameters': {'properties': {'query': {'description': 'String to search for: words, a phrase, or '
                                                                      'an exact identifier.',
                                                       'type': 'string'},
                                             'page': {'default': 0,
                                                      'description': 'Page of results to return, 0 is the first '
                                                                     '(best) page.',
                                                      'type': 'integer'},
                                             'request_heartbeat': {'default': False,
                                                                   'description': 'Request an immediate heartbeat '
                                                                                  'after the function runs. Set to '
                                                                                  'true to chain another function '
                                                                                  'call (e.g. another search) '
                                                                                  'before answering.',
                                                                   'type': 'boolean'}},
                              'required': ['query'],
                              'type': 'object'}}},
 {'type': 'function',
  'function': {'name': 'archival_memory_insert',
               'description': 'Adds a passage to archival memory, to find later with archival_memory_search. '
                              'Phrase it so it can be found and understood on its own.',
               'parameters': {'properties': {'content': {'description': 'Content to write to the memory. All '
                                                                        'unicode (including emojis) are supported.',
                                                         'type': 'string'},
                                             'request_heartbeat': {'default': False,
                                                                   'description': 'Request an immediate heartbeat '
                                                                                  'after the function runs. Set to '
                                                                                  'true to chain another function '
                                                                                  'call before answering.',
                                                                   'type': 'boolean'}},
                              'required': ['content'],
                              'type': 'object'}}},
 {'type': 'function',
  'function': {'name': 'conversation_search',
               'description': 'Searches recall storage: every message of this conversation, including those '
                              'evicted from your context. Returns one page of matching messages.',
               'parameters': {'properties': {'query': {'description': 'Words to search for.', 'type': 'string'},
                                             'page': {'default': 0,
                                                      'description': 'Page of results to return, 0 is the first '
                                                                     'page.',
                                                      'type': 'integer'},
                                             'request_heartbeat': {'default': False,
                                                                   'description': 'Request an immediate heartbeat '
                                                                                  'after the function runs. Set to '
                                                                                  'true to chain another function '
                                                                                  'call before answering.',
                                                                   'type': 'boolean'}},
                              'required': ['query'],
                              'type': 'object'}}},
 {'type': 'function',
  'function': {'name': 'core_memory_append',
               'description': 'Appends to a block of your core memory, which is always in your context. Keep it to '
                              'key facts.',
               'parameters': {'properties': {'label': {'description': 'Section of the memory to edit: persona (who '
                                                                      'you are) or human (facts about the user).',
                                                       'enum': ['persona', 'human'],
                                                       'type': 'string'},
                                             'content': {'description': 'Content to append. All unicode (including '
                                                                        'emojis) are supported.',
                                                         'type': 'string'},
                                             'request_heartbeat': {'default': False,
                                                                   'description': 'Request an immediate heartbeat '
                                                                                  'after the function runs. Set to '
                                                                                  'true to chain another function '
                                                                                  'call before answering.',
                                                                   'type': 'boolean'}},
                              'required': ['label', 'content'],
                              'type': 'object'}}},
 {'type': 'function',
  'function': {'name': 'core_memory_replace',
               'description': 'Replaces text in a block of your core memory. To delete, pass an empty new_content.',
               'parameters': {'properties': {'label': {'description': 'Section of the memory to edit: persona or '
                                                                      'human.',
                                                       'enum': ['persona', 'human'],
                                                       'type': 'string'},
                                             'old_content': {'description': 'The exact text to replace.',
                                                             'type': 'string'},
                                             'new_content': {'description': 'The text to put in its place.',
                                                             'type': 'string'},
                                             'request_heartbeat': {'default': False,
                                                                   'description': 'Request an immediate heartbeat '
                                                                                  'after the function runs. Set to '
                                                                                  'true to chain another function '
                                                                                  'call before answering.',
                                                                   'type': 'boolean'}},
                              'required': ['label', 'old_content', 'new_content'],
                              'type': 'object'}}}]


class _Unbound:
    pass


def test_schemas_are_pinned() -> None:
    generated = [function_schema(getattr(Toolbox, name).__get__(_Unbound())) for name in Toolbox.NAMES]
    assert generated == EXPECTED


def test_every_function_but_send_message_takes_request_heartbeat() -> None:
    for schema in EXPECTED:
        properties = schema["function"]["parameters"]["properties"]
        assert ("request_heartbeat" in properties) == (schema["function"]["name"] != "send_message")


def test_core_memory_limits_and_replace() -> None:
    core = CoreMemory(limit=40)
    core.blocks["human"] = "Name: Ada"
    core.replace("human", "Ada", "Grace")
    assert core.blocks["human"] == "Name: Grace"
    with pytest.raises(ToolError, match="over its limit of 40"):
        core.append("human", "x" * 50)
    assert core.blocks["human"] == "Name: Grace"  # a refused edit changes nothing
    with pytest.raises(ToolError, match="not found"):
        core.replace("human", "Bob", "Eve")
    with pytest.raises(ToolError, match="no core memory block"):
        core.append("diary", "hello")
