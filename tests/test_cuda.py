"""The same results on a CUDA device as on the CPU: operators, Richardson-Lucy, a bundled
model's restore, and a short bf16 training run. Skipped without a CUDA device (CI has none);
run on a GPU machine with ``pytest -k cuda``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from piddpm.acquisition import blur, blur_adjoint
from piddpm.baselines import richardson_lucy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 64, 48, generator=g)
    psf = torch.rand(3, 1, 9, 9, generator=g)
    return x, psf / psf.sum(dim=(-2, -1), keepdim=True)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_cuda_blur_and_adjoint_match_cpu(boundary):
    x, psf = _pair()
    for op in (blur, blur_adjoint):
        cpu = op(x, psf, boundary=boundary)
        gpu = op(x.cuda(), psf.cuda(), boundary=boundary)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)


def test_cuda_richardson_lucy_matches_cpu():
    x, psf = _pair(1)
    observed = blur(x, psf) + 0.01
    cpu = richardson_lucy(observed, psf, 20)
    gpu = richardson_lucy(observed.cuda(), psf.cuda(), 20)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)


def test_cuda_restore_with_the_bundled_unet_matches_cpu():
    from piddpm.restore import restore

    rng = np.random.default_rng(0)
    image = rng.poisson(200 * rng.random((96, 80)) + 20).astype(np.float32)
    cpu = restore(image, model="unet", device="cpu", progress=False).mean
    gpu = restore(image, model="unet", device="cuda", progress=False).mean
    scale = float(np.abs(cpu).max())
    assert np.abs(gpu - cpu).max() < 1e-3 * scale


def test_cuda_pi_ddpm_training_steps_are_finite(tmp_path):
    from piddpm.config import config_from_dict
    from piddpm.training import load_trained, train

    cfg = config_from_dict(
        {
            "method": "pi-ddpm",
            "model": {"preset": "tiny"},
            "steps": 4,
            "batch_size": 4,
            "patch_size": 32,
            "precision": "bf16",
            "channels_last": True,
            "log_every": 1,
            "validation": {"every": 0, "num_samples": 2, "num_steps": 2},
            "schedule": {"T": 100},
            "data": {"specimens": "filaments:1,puncta:1", "psf_size": 9, "n_kernels": 4},
        }
    )
    result = train(cfg, out_dir=tmp_path / "run", device="cuda", progress=False)
    assert result.step == 4 and result.model_path is not None
    net, info = load_trained(result.model_path)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert info["hardware"]["device"] == "cuda"
