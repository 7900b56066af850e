"""Process-wide torch settings a stage applies before it trains."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def configure_torch(num_threads: int | None, seed: int) -> int:
    """Threads (default: all cores — two trainings in parallel only fight over them) and seeds."""
    threads = num_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return threads
