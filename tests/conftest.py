"""Test-wide settings.

Torch uses one intra-op thread in tests: the tensors here are tiny, and on a 2-core machine
whose other core is busy, two threads make every small matrix multiply far slower.
"""

import torch

torch.set_num_threads(1)
