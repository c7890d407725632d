"""ragrec: retrieval-augmented LLM recommendation on Ray."""

__version__ = "0.1.0"
