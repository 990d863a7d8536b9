"""The agent: the MemGPT loop, its main context and memory, its functions, and the LLM client."""

from docqa.agent.loop import Agent, AgentResult

__all__ = ["Agent", "AgentResult"]
