"""pagedllm: an LLM serving engine with a compiled C++/CUDA core and vLLM's API."""
__version__ = "0.1.0"
