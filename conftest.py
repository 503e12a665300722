"""Repository-wide pytest setup (applies to tests/ and every plugin's tests/)."""

import torch

# The test models are tiny: one thread is faster than two fighting over two cores.
torch.set_num_threads(1)
