# Type stubs for the compiled extension pagedllm._C (see csrc/bindings/).
from . import core as core
from . import ops as ops

with_cuda: bool
