"""What tests and benchmarks share: the OpenAI-compatible test LLM server and its policies, real chat
templates, and generators of real and hostile documents. Not part of the docqa package."""
