"""Retrieval: embedding mixture, faiss item index, history selection (RALLRec relevance / recency / reranker)."""

from ragrec.retrieval.embeddings import mix, normalize, pca
from ragrec.retrieval.history import reorder_by_time, select_history
from ragrec.retrieval.index import ItemIndex

__all__ = ["ItemIndex", "mix", "normalize", "pca", "reorder_by_time", "select_history"]
