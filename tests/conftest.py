"""Shared test settings.

Torch's intra-op thread pool makes the many small FFTs and convolutions of this suite slower,
not faster, on a 2-core machine (and much slower when the cores are shared), so the tests run
with one thread unless ``PIDDPM_TEST_THREADS`` says otherwise.
"""

import os

import torch

torch.set_num_threads(int(os.environ.get("PIDDPM_TEST_THREADS", "1")))
