"""pagedllm's kernels behind one set of functions (signatures and semantics: ops/reference.py).

Until the compiled kernels are wired in, every op is the torch reference.
"""
from .reference import (  # noqa: F401
    fused_add_rms_norm,
    paged_attention,
    reshape_and_cache,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
)
