"""The agent: the MemGPT loop (loop.py), its main context and memory, its functions (tools.py), and the LLM
client (llm.py). Nothing is imported here, so that `docqa.agent.result` stays light."""
