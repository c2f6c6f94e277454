"""RAG chat: three retrievals in parallel (vectors, SQL facts, a knowledge graph), fused,
answered by an LLM with the conversation's memory."""
