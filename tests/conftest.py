"""Shared test setup.

One intra-op thread: the parity tests run tiny tensors, where thread start-up dominates, and on a loaded
2-core machine two threads made the suite ~10x slower. Results are unaffected (float32 CPU kernels here
are deterministic for a given thread count and the tolerances hold for either count).
"""

import torch

torch.set_num_threads(1)
