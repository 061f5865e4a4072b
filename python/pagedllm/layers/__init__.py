"""Model building blocks: linear (tensor-parallel-ready), embeddings, norms, rotary, attention."""
