"""The embedders: the transformer (sentence-transformers), the static tier, and the fast ONNX query path."""

from docqa.embeddings.load import load_embedder
from docqa.embeddings.transformer import Embedder, EmbeddingError, model_limit, model_location

__all__ = ["Embedder", "EmbeddingError", "load_embedder", "model_limit", "model_location"]
