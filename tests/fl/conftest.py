"""Keep torch on one thread: the machine has two cores shared by several test runs, and single-threaded
CPU kernels make the floating-point results reproducible."""

import torch

torch.set_num_threads(1)
