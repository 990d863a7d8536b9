"""The paper's two document evaluations behind `docqa bench`: nested key-value retrieval and document QA.

Each runs in one of three modes: `agent` (the docqa agent pages through archival memory), `baseline`
(a fixed-context prompt, as the paper's GPT baselines) and `ceiling` (no LLM: what the store itself
permits). Results go to a resumable JSONL file, a summary.json, a printed table and a PNG figure.
"""
