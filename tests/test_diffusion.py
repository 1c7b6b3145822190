"""Tests of piddpm.diffusion: schedules, objectives, samplers and guidance.

The samplers are checked with exact ("oracle") noise predictors, whose correct output is
known in closed form, so a sign or index slip in a formula cannot pass: an oracle built from
a known ``y0`` must return ``y0``; the exact MMSE predictor of Gaussian data must produce
samples with that Gaussian's mean and standard deviation.

The blur operator A is the shared ``piddpm.acquisition`` one; the physics is checked against an
independent spatial-domain periodic convolution written here (a sum of rolled copies).
"""

from __future__ import annotations

import math

import pytest
import torch

from piddpm import PiddpmError
from piddpm.diffusion import (
    SampleResult,
    cosine_schedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    diffusion_loss,
    learned_clean_scale,
    linear_schedule,
    physics_target,
    q_sample,
    sample_noise_levels,
    schedule_from_config,
    supervised_loss,
    supervised_predict,
)
from piddpm.diffusion.guidance import rms
from piddpm.networks import build_unet

DT = torch.float64


# ---------------------------------------------------------------------------------------------
# helpers: an independent periodic convolution and oracle networks


def roll_blur(y: torch.Tensor, psf: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """Periodic 'same' convolution as a sum of shifted copies (centre at kh//2, kw//2).

    ``(A y)[i, j] = sum_{m, n} psf[m, n] y[i + kh//2 - m, j + kw//2 - n]`` (indices mod H, W);
    the adjoint shifts the other way. One PSF per batch element or shared.
    """
    kh, kw = psf.shape[-2:]
    out = torch.zeros_like(y)
    for m in range(kh):
        for n in range(kw):
            shift = (m - kh // 2, n - kw // 2)
            if adjoint:
                shift = (-shift[0], -shift[1])
            out = out + psf[:, :, m : m + 1, n : n + 1] * torch.roll(y, shifts=shift, dims=(-2, -1))
    return out


def gaussian_psf(size: int, sigma_px: float, batch: int = 1) -> torch.Tensor:
    ax = torch.arange(size, dtype=DT) - size // 2
    k = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma_px**2))
    return (k / k.sum()).expand(batch, 1, size, size).clone()


def blobs(batch: int, size: int, seed: int) -> torch.Tensor:
    """Random sharp discs on a dark background in [-1, 1] (B, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=DT), torch.arange(size, dtype=DT), indexing="ij"
    )
    img = torch.zeros(batch, 1, size, size, dtype=DT)
    for b in range(batch):
        for _ in range(6):
            cy, cx = torch.rand(2, generator=g, dtype=DT) * size
            rad = 1.5 + 3 * torch.rand(1, generator=g, dtype=DT)
            img[b, 0] += ((yy - cy) ** 2 + (xx - cx) ** 2 < rad**2).to(DT)
    return img.clamp(max=1.0) * 2 - 1


class OracleFromY0(torch.nn.Module):
    """eps_hat = (r_t - sqrt(gamma) r0) / sqrt(1 - gamma) for a known r0; optional exact g_hat."""

    downsample_factor = 1

    def __init__(
        self, r0: torch.Tensor, physics: tuple | None = None, matched: bool = True
    ) -> None:
        super().__init__()
        self.r0 = r0
        self.physics = physics  # (x, x_clean, psf): emit g_hat = target at y_t
        self.matched = matched
        self.in_channels = 2
        self.out_channels = 2 if physics else 1

    def forward(self, inp, gamma):
        r = inp[:, :1]
        g = gamma.reshape(-1, 1, 1, 1).to(r.dtype)
        r0 = self.r0.repeat_interleave(r.shape[0] // self.r0.shape[0], dim=0)
        eps = (r - g.sqrt() * r0) / (1 - g).sqrt()
        if self.physics is None:
            return eps
        x, x_clean, psf = self.physics
        y_t = r + g.sqrt() * inp[:, 1:]
        ref = x_clean.repeat_interleave(r.shape[0] // x_clean.shape[0], 0)
        target = physics_target(y_t, g.sqrt() * ref if self.matched else ref, psf)
        return torch.cat([eps, target / rms(target)], dim=1)


class GaussianOracle(torch.nn.Module):
    """Exact MMSE noise predictor for data r0 ~ N(mu, sd^2) i.i.d. per pixel.

    r_t = sqrt(g) r0 + sqrt(1-g) eps is Gaussian, so
    E[eps | r_t] = sqrt(1-g) (r_t - sqrt(g) mu) / (g sd^2 + 1 - g).
    """

    in_channels, out_channels, downsample_factor = 2, 1, 1

    def __init__(self, mu: float, sd: float) -> None:
        super().__init__()
        self.mu, self.sd = mu, sd

    def forward(self, inp, gamma):
        r = inp[:, :1]
        g = gamma.reshape(-1, 1, 1, 1).to(r.dtype)
        return (1 - g).sqrt() * (r - g.sqrt() * self.mu) / (g * self.sd**2 + 1 - g)


# ---------------------------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize("sched", [linear_schedule(50, 1e-4, 0.05), cosine_schedule(300)])
def test_schedule_gamma_is_the_running_product_of_alphas(sched):
    prod = 1.0
    for i in range(sched.T):
        prod *= 1.0 - sched.betas[i].item()
        assert sched.gammas[i].item() == pytest.approx(prod, rel=1e-12)
        assert sched.gammas_prev[i].item() == pytest.approx(
            prod / (1.0 - sched.betas[i].item()), rel=1e-12
        )
    assert sched.gammas_prev[0].item() == 1.0  # gamma_0 = 1
    assert sched.T == sched.betas.numel() and sched.gammas.dtype == torch.float64


@pytest.mark.parametrize("sched", [linear_schedule(60, 1e-4, 0.05), cosine_schedule(200)])
def test_posterior_is_gaussian_conditioning_of_the_forward_process(sched):
    # Joint of (r_{t-1}, r_t) given r0: r_{t-1} = sqrt(g') r0 + sqrt(1-g') e1,
    # r_t = sqrt(a) r_{t-1} + sqrt(b) e2. Condition r_{t-1} on r_t by the Gaussian formulas.
    g, gp, a = sched.gammas, sched.gammas_prev, sched.alphas
    var_prev, cov, var_t = 1 - gp, a.sqrt() * (1 - gp), 1 - g
    cond_var = var_prev - cov**2 / var_t
    coef_rt = cov / var_t
    coef_r0 = gp.sqrt() - coef_rt * g.sqrt()
    torch.testing.assert_close(sched.posterior_variance, cond_var, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(sched.posterior_mean_coef_rt, coef_rt, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(sched.posterior_mean_coef_r0, coef_r0, rtol=1e-9, atol=1e-12)
    assert sched.posterior_variance[0].item() == 0.0  # t = 1 is deterministic given r0


def test_algorithm2_mean_equals_posterior_mean_at_predicted_r0():
    s = linear_schedule(40, 1e-4, 0.05)
    gen = torch.Generator().manual_seed(1)
    r_t, eps_hat = torch.randn(2, 5, generator=gen, dtype=DT)
    for i in (0, 7, 39):
        mu_alg2 = (r_t - s.eps_coef[i] * eps_hat) * s.sqrt_recip_alphas[i]
        r0_hat = (r_t - s.sqrt_one_minus_gammas[i] * eps_hat) / s.sqrt_gammas[i]
        mu_post = s.posterior_mean_coef_r0[i] * r0_hat + s.posterior_mean_coef_rt[i] * r_t
        torch.testing.assert_close(mu_alg2, mu_post, rtol=1e-10, atol=1e-12)


def test_cosine_schedule_endpoints_and_closed_form():
    T, s_off = 1000, 0.008
    sched = cosine_schedule(T, s_off)

    def f(t):
        return math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2

    assert sched.gammas[0].item() == pytest.approx(f(1) / f(0), rel=1e-12)
    assert sched.gammas[T // 2 - 1].item() == pytest.approx(f(T // 2) / f(0), rel=1e-9)
    assert sched.gammas[-1].item() < 1e-6  # reaches (clipped) zero signal
    assert 1 - sched.gammas[0].item() < 1e-4  # first step nearly noiseless
    assert sched.betas.max().item() <= 0.999


def test_linear_schedule_endpoints_and_config_round_trip():
    sched = linear_schedule(200, 1e-4, 3e-2)
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(
        3e-2
    )
    for s in (sched, cosine_schedule(100, 0.01)):
        again = schedule_from_config(s.config)
        torch.testing.assert_close(again.betas, s.betas, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [dict(T=0), dict(T=10, beta_start=0.0), dict(T=10, beta_end=1.0)])
def test_linear_schedule_rejects_bad_input(bad):
    with pytest.raises(PiddpmError):
        linear_schedule(**bad)


def test_schedule_at_casts_and_indexes():
    s = linear_schedule(10, 0.01, 0.1)
    like = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    v = s.at("gammas", torch.tensor([0, 4, 9]), like)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32
    assert v[1].item() == pytest.approx(s.gammas[4].item(), rel=1e-6)
    with pytest.raises(PiddpmError):
        s.at("gammas", 10, like)


# ---------------------------------------------------------------------------------------------
# forward process and objective


def test_forward_noising_has_the_right_mean_and_variance():
    gen = torch.Generator().manual_seed(0)
    r0 = torch.linspace(-1, 1, 7, dtype=DT).reshape(1, 1, 1, 7)
    gamma = torch.full((20000,), 0.3, dtype=DT)
    eps = torch.randn(20000, 1, 1, 7, generator=gen, dtype=DT)
    r_t = q_sample(r0.expand(20000, 1, 1, 7), gamma, eps)
    # standard error of the mean: sqrt(0.7 / 20000) = 0.006
    torch.testing.assert_close(
        r_t.mean(0).flatten(), math.sqrt(0.3) * r0.flatten(), atol=0.025, rtol=0
    )
    torch.testing.assert_close(
        r_t.var(0).flatten(), torch.full((7,), 0.7, dtype=DT), atol=0.03, rtol=0
    )


def test_continuous_noise_levels_cover_each_step_interval_uniformly():
    sched = linear_schedule(4, 0.1, 0.4)
    gen = torch.Generator().manual_seed(3)
    g = sample_noise_levels(40000, sched, generator=gen)
    edges = torch.cat([sched.gammas.flip(0), torch.ones(1, dtype=DT)])  # gamma_4 < ... < gamma_0
    counts = torch.histc(g, bins=1, min=0, max=1)
    assert counts.item() == 40000 and g.min() >= edges[0] and g.max() < 1.0
    frac = torch.tensor([((g >= edges[k]) & (g < edges[k + 1])).double().mean() for k in range(4)])
    torch.testing.assert_close(frac, torch.full((4,), 0.25, dtype=DT), atol=0.015, rtol=0)
    # within one interval the draw is uniform: its mean is the midpoint
    inside = g[(g >= edges[1]) & (g < edges[2])]
    assert inside.mean().item() == pytest.approx((edges[1] + edges[2]).item() / 2, abs=0.005)


def test_physics_target_is_closed_form_and_autograd_of_the_data_misfit():
    gen = torch.Generator().manual_seed(5)
    psf = torch.rand(2, 1, 5, 3, generator=gen, dtype=DT)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    y_t = torch.randn(2, 1, 12, 10, generator=gen, dtype=DT, requires_grad=True)
    x_clean = torch.randn(2, 1, 12, 10, generator=gen, dtype=DT)
    g = physics_target(y_t.detach(), x_clean, psf)
    closed = 2 * roll_blur(roll_blur(y_t.detach(), psf) - x_clean, psf, adjoint=True)
    torch.testing.assert_close(g, closed, rtol=1e-10, atol=1e-12)
    misfit = (roll_blur(y_t, psf) - x_clean).square().sum()
    (auto,) = torch.autograd.grad(misfit, y_t)
    torch.testing.assert_close(g, auto, rtol=1e-10, atol=1e-12)


def _training_pair(size=16, batch=3, seed=0):
    gt = blobs(batch, size, seed)
    psf = gaussian_psf(7, 1.5, batch)
    clean = roll_blur(gt, psf)
    noise = 0.05 * torch.randn(
        gt.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=DT
    )
    return gt, clean + noise, clean, psf


@pytest.mark.parametrize("reference", ["matched", "unscaled"])
def test_loss_vanishes_for_the_oracle_and_uses_the_sampling_convention_for_y_t(reference):
    gt, obs, clean, psf = _training_pair()
    matched = reference == "matched"
    net = OracleFromY0(gt - obs, physics=(obs, clean, psf), matched=matched)

    def run(ref):
        return diffusion_loss(
            net,
            gt,
            obs,
            clean,
            psf,
            cosine_schedule(100),
            physics_reference=ref,
            generator=torch.Generator().manual_seed(2),
        )

    loss, logs = run(reference)
    # eps is reconstructed exactly, and g_hat = rms-normalised 2 A^T (A y_t - c x_clean) with
    # y_t = r_t + sqrt(gamma) x (c = sqrt(gamma) matched, 1 unscaled) matches the target ...
    assert logs["loss_eps"] < 1e-16 and logs["loss_phys"] < 1e-16 and loss.item() < 1e-16
    # ... and the other convention does not
    assert run("unscaled" if matched else "matched")[1]["loss_phys"] > 1e-3
    # a network that is wrong about the physics is penalised with weight w
    bad = OracleFromY0(gt - obs, physics=(obs, -clean, psf))
    loss_b, logs_b = diffusion_loss(
        bad, gt, obs, clean, psf, cosine_schedule(100), physics_weight=0.5
    )
    assert logs_b["loss_phys"] > 0.1 and loss_b.item() == pytest.approx(
        0.5 * logs_b["loss_phys"], rel=1e-6
    )


def test_loss_ddpm_direct_target_and_errors():
    gt, obs, clean, psf = _training_pair()
    net = OracleFromY0(gt)  # target="direct" diffuses y0 itself
    _, logs = diffusion_loss(
        net, gt, obs, None, None, linear_schedule(50), method="ddpm", target="direct"
    )
    assert logs["loss_eps"] < 1e-16 and logs["loss_phys"] == 0.0
    _, logs_wrong = diffusion_loss(
        net, gt, obs, None, None, linear_schedule(50), method="ddpm", target="residual"
    )
    assert logs_wrong["loss_eps"] > 1e-3
    with pytest.raises(PiddpmError, match="2 output channels"):
        diffusion_loss(net, gt, obs, clean, psf, linear_schedule(50), method="pi-ddpm")
    with pytest.raises(PiddpmError, match="observed_clean"):
        diffusion_loss(net, gt, obs, None, psf, linear_schedule(50), method="pi-ddpm")
    with pytest.raises(PiddpmError, match="shape"):
        diffusion_loss(net, gt, obs[:, :, :8], None, None, linear_schedule(50), method="ddpm")


def test_loss_trains_the_network_and_not_the_physics_target():
    from piddpm.networks import build_unet

    torch.manual_seed(0)
    gt, obs, clean, psf = (t.float() for t in _training_pair(size=16, batch=2))
    net = build_unet("tiny", base_channels=8, channel_mults=(1, 2))
    loss, _ = diffusion_loss(net, gt, obs, clean, psf, cosine_schedule(100), physics_weight=1.0)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.conv_out.weight.grad.abs().sum() > 0


def test_supervised_loss_and_prediction():
    class Doubler(torch.nn.Module):
        def forward(self, x, gamma):
            assert gamma is None
            return 2 * x

    gt, obs, _, _ = _training_pair()
    loss, logs = supervised_loss(Doubler(), gt, obs, kind="mse")
    assert loss.item() == pytest.approx((2 * obs - gt).square().mean().item(), rel=1e-12)
    loss1, _ = supervised_loss(Doubler(), gt, obs, kind="l1", target="residual")
    assert loss1.item() == pytest.approx((3 * obs - gt).abs().mean().item(), rel=1e-12)
    torch.testing.assert_close(supervised_predict(Doubler(), obs, target="residual"), 3 * obs)
    with pytest.raises(PiddpmError):
        supervised_loss(Doubler(), gt, obs, kind="huber")


# ---------------------------------------------------------------------------------------------
# samplers


def test_ddpm_and_ddim_with_an_oracle_return_y0():
    gt, obs, _, _ = _training_pair(size=12, batch=2)
    net = OracleFromY0(gt - obs)
    gen = torch.Generator().manual_seed(0)
    out = ddpm_sample(
        net,
        obs,
        linear_schedule(200),
        regulariser=None,
        guidance="none",
        generator=gen,
        num_samples=2,
    )
    assert isinstance(out, SampleResult) and out.samples.shape == (2, 2, 1, 12, 12)
    torch.testing.assert_close(out.mean, gt, atol=1e-9, rtol=0)
    for steps in (1, 7, 50):
        out = ddim_sample(
            net,
            obs,
            cosine_schedule(500),
            num_steps=steps,
            regulariser=None,
            guidance="none",
            generator=gen,
        )
        torch.testing.assert_close(out.mean, gt, atol=1e-9, rtol=0)
    # stochastic DDIM with the oracle is still exact
    out = ddim_sample(
        net,
        obs,
        cosine_schedule(500),
        num_steps=10,
        eta_ddim=1.0,
        regulariser=None,
        guidance="none",
    )
    torch.testing.assert_close(out.mean, gt, atol=1e-9, rtol=0)


def test_ddpm_with_the_exact_gaussian_predictor_samples_that_gaussian():
    mu, sd = 0.5, 0.3
    obs = torch.zeros(4, 1, 64, 64, dtype=DT)  # x = 0: r0 = y0 ~ N(mu, sd^2)
    gen = torch.Generator().manual_seed(0)
    out = ddpm_sample(
        GaussianOracle(mu, sd),
        obs,
        linear_schedule(200),
        regulariser=None,
        guidance="none",
        generator=gen,
    )
    # 16384 pixels: standard errors 0.0023 (mean), 0.0017 (sd); the 200-step chain is
    # slightly under-dispersed (measured 0.291)
    assert out.mean.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.mean.std().item() == pytest.approx(sd, rel=0.05)


def test_ddim_with_the_exact_gaussian_predictor_converges_as_steps_grow():
    mu, sd = 0.5, 0.3
    obs = torch.zeros(4, 1, 64, 64, dtype=DT)
    sched = cosine_schedule(1000)
    sds = []
    for steps in (10, 50):
        out = ddim_sample(
            GaussianOracle(mu, sd),
            obs,
            sched,
            num_steps=steps,
            regulariser=None,
            guidance="none",
            generator=torch.Generator().manual_seed(0),
        )
        assert out.mean.mean().item() == pytest.approx(mu, abs=0.01)
        sds.append(out.mean.std().item())
    assert sds[1] == pytest.approx(sd, rel=0.07) and abs(sds[1] - sd) < abs(sds[0] - sd)


def test_ddim_eta0_is_deterministic_but_ddpm_and_ddim_eta1_are_not():
    from piddpm.networks import build_unet

    torch.manual_seed(0)
    net = build_unet("tiny", base_channels=8, channel_mults=(1, 2), out_channels=1).eval()
    obs = torch.randn(1, 1, 16, 16)
    r_T = torch.randn(1, 1, 16, 16)
    sched = linear_schedule(20)

    def run(fn, seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return fn(net, obs, sched, initial_noise=r_T, generator=g, guidance="none", **kw).mean

    a, b = run(ddim_sample, 1, num_steps=5), run(ddim_sample, 2, num_steps=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (run(ddpm_sample, 1) - run(ddpm_sample, 2)).abs().max() > 1e-3
    assert (
        run(ddim_sample, 1, num_steps=5, eta_ddim=1.0)
        - run(ddim_sample, 2, num_steps=5, eta_ddim=1.0)
    ).abs().max() > 1e-3


def test_samples_are_independent_and_give_a_spread():
    from piddpm.networks import build_unet

    torch.manual_seed(0)
    net = build_unet("tiny", base_channels=8, channel_mults=(1, 2), out_channels=1).eval()
    obs = torch.randn(2, 1, 10, 14)  # odd-ish size: padded to the net's factor and cropped
    out = ddim_sample(
        net,
        obs,
        linear_schedule(20),
        num_steps=4,
        num_samples=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.samples.shape == (2, 3, 1, 10, 14) and out.mean.shape == (2, 1, 10, 14)
    torch.testing.assert_close(out.mean, out.samples.mean(1))
    torch.testing.assert_close(out.std, out.samples.std(1))
    assert (out.std > 0).all()


class WidePrior(torch.nn.Module):
    """Exact MMSE predictor for r0 ~ N(0, sd^2) (y0 scattered around x), optionally with a
    perfectly learned physics channel g_hat = 2 A^T (A y_t - sqrt(gamma) x_clean) at the
    current state (the default "matched" training target)."""

    in_channels, downsample_factor = 2, 1

    def __init__(self, sd: float, physics: tuple | None = None) -> None:
        super().__init__()
        self.sd, self.physics = sd, physics
        self.out_channels = 2 if physics else 1

    def forward(self, inp, gamma):
        r = inp[:, :1]
        g = gamma.reshape(-1, 1, 1, 1).to(r.dtype)
        eps = (1 - g).sqrt() * r / (g * self.sd**2 + 1 - g)
        if self.physics is None:
            return eps
        x_clean, psf = self.physics
        y_t = r + g.sqrt() * inp[:, 1:]
        return torch.cat([eps, physics_target(y_t, g.sqrt() * x_clean, psf)], dim=1)


SD = 0.3  # spread of the prior around x in the guidance tests


@pytest.mark.parametrize("sampler", ["ddpm", "ddim50", "ddim10", "ddim3"])
@pytest.mark.parametrize("guidance", ["known", "learned"])
def test_physics_guidance_moves_samples_towards_data_consistency(sampler, guidance):
    # x = A y0 is blurred; the prior scatters y0 around x with sd 0.3. Guidance along the data-
    # consistency gradient (from the PSF, or a perfectly learned g_hat) must reduce ||A y - x||
    # and the error to y0 compared with unguided sampling from the same noise, for the
    # ancestral sampler and for DDIM. Learned guidance is evaluated at the noisy state, a poor
    # clean-space direction when a DDIM jump is long: at 3 steps it must merely not hurt.
    gt = blobs(2, 32, seed=4)
    psf = gaussian_psf(9, 1.5, 2)
    x = roll_blur(gt, psf)

    def run(guide):
        net = WidePrior(SD, physics=(x, psf) if guide == "learned" else None)
        kw = dict(
            regulariser=None, guidance=guide, psf=psf, generator=torch.Generator().manual_seed(0)
        )
        if sampler == "ddpm":
            return ddpm_sample(net, x, linear_schedule(200), **kw).mean
        return ddim_sample(net, x, linear_schedule(200), num_steps=int(sampler[4:]), **kw).mean

    def misfit(y):
        return (roll_blur(y, psf) - x).square().mean().sqrt().item()

    def error(y):
        return (y - gt).square().mean().sqrt().item()

    plain, guided = run("none"), run(guidance)
    if guidance == "learned" and sampler == "ddim3":
        assert misfit(guided) < misfit(plain) and error(guided) < error(plain)
    else:
        assert misfit(guided) < 0.8 * misfit(plain), (misfit(guided), misfit(plain))
        assert error(guided) < error(plain), (error(guided), error(plain))


def test_known_step_never_overshoots_the_misfit_minimum():
    from piddpm.acquisition import BlurOperator
    from piddpm.diffusion.guidance import known_step

    gt = blobs(1, 24, seed=1)
    psf = gaussian_psf(7, 1.2)
    op = BlurOperator(psf, (24, 24), boundary="periodic")
    x = op(gt)
    y = torch.zeros_like(x)
    before = (op(y) - x).square().sum()
    for step in (1e-3, 1.0, 1e6):
        after = (op(y - known_step(y, x, op, step)) - x).square().sum()
        assert after < before
    huge = known_step(y, x, op, 1e6)
    # at the exact line minimum the new residual is orthogonal to A d
    d = huge / huge.square().mean().sqrt()
    assert abs(((op(y - huge) - x) * op(d)).sum().item()) < 1e-8 * before.item()


def test_ddim_learned_correction_total_hardly_depends_on_the_number_of_steps():
    # A prior that takes the state as signal (eps_hat = 0) keeps every correction, so from
    # r_T = 0 the output is minus the sum of the clean-space corrections; with a constant
    # unit-rms g_hat that sum is kappa * sum_k gamma_t min(gamma_s - gamma_t, cap), a Riemann
    # sum of kappa * (1 - gamma_T^2) / 2 whatever the number of steps.
    class ConstantG(torch.nn.Module):
        in_channels, out_channels, downsample_factor = 2, 2, 1

        def forward(self, inp, gamma):
            return torch.cat([torch.zeros_like(inp[:, :1]), torch.ones_like(inp[:, :1])], dim=1)

    x = torch.zeros(1, 1, 8, 8, dtype=DT)
    sched = linear_schedule(200)
    integral = learned_clean_scale(10.0) * (1 - sched.gammas[-1].item() ** 2) / 2
    for steps in (25, 50, 200):
        out = ddim_sample(
            ConstantG(),
            x,
            sched,
            num_steps=steps,
            regulariser=None,
            guidance="learned",
            eta=10.0,
            initial_noise=x,
        )
        assert out.mean.std().item() < 1e-12
        assert -out.mean.mean().item() == pytest.approx(integral, rel=0.06), steps


def test_regulariser_shrinks_the_residual():
    gt, obs, _, _ = _training_pair(size=16, batch=1)
    net = OracleFromY0(gt - obs)
    kw = dict(guidance="none", generator=torch.Generator().manual_seed(0))
    plain = ddim_sample(net, obs, linear_schedule(200), num_steps=10, regulariser=None, **kw).mean
    l1 = ddim_sample(
        net, obs, linear_schedule(200), num_steps=10, regulariser="l1", lam=0.1, **kw
    ).mean
    assert (l1 - obs).abs().sum() < (plain - obs).abs().sum()


def test_sampler_input_errors():
    gt, obs, _, psf = _training_pair(size=8, batch=1)
    one = OracleFromY0(gt - obs)
    with pytest.raises(PiddpmError, match="output channels"):
        ddpm_sample(one, obs, linear_schedule(10), guidance="learned")
    with pytest.raises(PiddpmError, match="psf"):
        ddim_sample(one, obs, linear_schedule(10), guidance="known")
    with pytest.raises(PiddpmError):
        ddim_sample(one, obs, linear_schedule(10), guidance="magic")
    with pytest.raises(PiddpmError):
        ddim_sample(one, obs[0], linear_schedule(10))
    with pytest.raises(PiddpmError):
        ddim_sample(one, obs, linear_schedule(10), num_steps=0)
    assert ddim_timesteps(200, 5) == [199, 149, 100, 50, 0]
    assert ddim_timesteps(3, 10) == [2, 1, 0]


def test_autocast_sampling_is_close_to_fp32():
    from piddpm.networks import build_unet

    torch.manual_seed(0)
    net = build_unet("tiny", base_channels=8, channel_mults=(1, 2)).eval()
    obs = torch.randn(1, 1, 16, 16)
    kw = dict(num_steps=3, initial_noise=torch.randn(1, 1, 16, 16))
    a = ddim_sample(net, obs, linear_schedule(20), **kw).mean
    b = ddim_sample(net, obs, linear_schedule(20), autocast=True, **kw).mean
    assert (a - b).abs().max() < 0.05 * a.abs().max()


# ---------------------------------------------------------------------------------------------
# end to end: a tiny network overfits one pair


@pytest.mark.slow
def test_tiny_pi_ddpm_overfits_one_pair_far_better_than_its_observation():
    from piddpm.networks import build_unet

    torch.manual_seed(0)
    gt, obs, clean, psf = (t.float() for t in _training_pair(size=32, batch=1, seed=7))
    gt8, obs8, clean8 = (t.expand(8, -1, -1, -1) for t in (gt, obs, clean))
    psf8 = psf.expand(8, -1, -1, -1)
    net = build_unet("tiny")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = cosine_schedule(1000)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = diffusion_loss(net, gt8, obs8, clean8, psf8, sched, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def psnr(a):  # data range 2 (model units [-1, 1])
        return 10 * math.log10(4 / (a - gt).square().mean().item())

    # defaults: learned physics guidance + L1 regulariser; measured gains ~10 dB
    ddim = ddim_sample(
        net, obs, linear_schedule(200), num_steps=20, generator=torch.Generator().manual_seed(1)
    )
    ddpm = ddpm_sample(net, obs, linear_schedule(200), generator=torch.Generator().manual_seed(1))
    for name, out in (("DDIM-20", ddim), ("DDPM-200", ddpm)):
        gain = psnr(out.mean) - psnr(obs)
        assert gain > 3.0, f"{name}: PSNR gain {gain:.2f} dB (observation {psnr(obs):.2f} dB)"


# ------------------------------------------------------------------ position-addressed noise
def test_plane_noise_windows_agree_where_they_overlap_and_are_standard_normal():
    from piddpm.diffusion.noise import PlaneNoise

    field = PlaneNoise(seed=7, block=16)
    big = field.window(3, 0, 1, -8, 5, 100, 90)
    small = field.window(3, 0, 1, 20, 37, 30, 41)
    assert torch.equal(small, big[:, 28:58, 32:73])
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1) < 0.05
    # other key, sample or seed: other (uncorrelated) noise
    for other in (
        field.window(4, 0, 1, -8, 5, 100, 90),
        field.window(3, 1, 1, -8, 5, 100, 90),
        PlaneNoise(8, 16).window(3, 0, 1, -8, 5, 100, 90),
    ):
        assert abs(float((other * big).mean())) < 0.05


def test_sampler_draws_from_the_noise_source_when_one_is_given():
    from piddpm.diffusion.noise import PlaneNoise, TileNoise

    torch.manual_seed(0)
    net = build_unet("tiny", 2, 2).eval()
    sched = linear_schedule(20)
    x = torch.randn(2, 1, 32, 32)
    field = PlaneNoise(1)
    noise = TileNoise([field, field], [(0, 0), (0, 16)], num_samples=1)
    a = ddim_sample(
        net,
        x,
        sched,
        num_steps=4,
        eta_ddim=1.0,
        noise=noise,
        generator=torch.Generator().manual_seed(1),
    )
    b = ddim_sample(
        net,
        x,
        sched,
        num_steps=4,
        eta_ddim=1.0,
        noise=noise,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(a.mean, b.mean)  # the generator is not used
    with pytest.raises(PiddpmError, match="noise for a batch"):
        ddim_sample(net, x, sched, num_steps=2, num_samples=2, noise=noise)


def test_l1_regulariser_gradient_is_sign_away_from_zero_and_continuous_through_it():
    from piddpm.diffusion.guidance import L1_SMOOTHING, regulariser_gradient

    r = torch.tensor([-1.0, -0.2, 0.2, 1.0], dtype=DT)
    assert torch.allclose(regulariser_gradient(r, "l1"), torch.sign(r), atol=2e-3)
    # a float-rounding-sized change of r moves the gradient by a rounding-sized amount
    tiny = torch.tensor([-1e-7, 1e-7], dtype=DT)
    g = regulariser_gradient(tiny, "l1")
    assert (g[1] - g[0]).abs() < 1e-4 / L1_SMOOTHING


# ---------------------------------------------------------------- DPM-Solver++ and settings


def _gaussian_ode_solution(sched, z, mu, sd):
    """Exact probability-flow ODE map of N(mu, sd^2) data: (x_t - sqrt(g_t) mu) / s_t is
    constant along the flow, s_t^2 = g_t sd^2 + 1 - g_t; from x_T = z to t = 0."""
    g = sched.gammas[-1].item()
    return mu + sd * (z - g**0.5 * mu) / (g * sd**2 + 1 - g) ** 0.5


def test_dpm_solver_is_second_order_and_beats_ddim_at_few_steps():
    """With the exact predictor of Gaussian data the sampler solves the probability-flow ODE,
    whose solution is known in closed form: DPM-Solver++(2M)'s error falls ~4x per doubling
    of the steps (second order; DDIM's ~2x), and at 10 steps it is far below DDIM's."""
    from piddpm.diffusion import dpm_solver_sample

    mu, sd = 0.5, 0.3
    obs = torch.zeros(1, 1, 32, 32, dtype=DT)
    z = torch.randn(1, 1, 32, 32, dtype=DT, generator=torch.Generator().manual_seed(0))

    def error(fn, sched, steps):
        out = fn(
            GaussianOracle(mu, sd),
            obs,
            sched,
            num_steps=steps,
            regulariser=None,
            guidance="none",
            initial_noise=z,
        )
        return (out.mean - _gaussian_ode_solution(sched, z, mu, sd)).abs().max().item()

    lin = linear_schedule(200, 1e-4, 3e-2)
    e10, e20 = error(dpm_solver_sample, lin, 10), error(dpm_solver_sample, lin, 20)
    assert e20 < e10 / 3.0
    d10, d20 = error(ddim_sample, lin, 10), error(ddim_sample, lin, 20)
    assert d20 > d10 / 2.5  # first order
    cos = cosine_schedule(2000)
    assert error(dpm_solver_sample, cos, 10) < 0.25 * error(ddim_sample, cos, 10)


def test_dpm_solver_with_an_oracle_returns_y0_and_is_deterministic():
    from piddpm.diffusion import dpm_solver_sample

    gt, obs, _, _ = _training_pair(size=12, batch=2)
    net = OracleFromY0(gt - obs)
    for steps in (1, 3, 10):
        out = dpm_solver_sample(
            net, obs, cosine_schedule(500), num_steps=steps, regulariser=None, guidance="none"
        )
        torch.testing.assert_close(out.mean, gt, atol=1e-9, rtol=0)
    net2 = build_unet("tiny", base_channels=8, channel_mults=(1, 2), out_channels=1).eval()
    x, r_t = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return dpm_solver_sample(
            net2,
            x,
            linear_schedule(50),
            num_steps=6,
            guidance="none",
            initial_noise=r_t,
            generator=gen,
        ).mean

    a, b = run(1), run(2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_sampler_evaluates_the_network_once_per_timestep():
    from piddpm.diffusion import SAMPLER_STEPS, run_sampler

    class Counting(torch.nn.Module):
        in_channels, out_channels = 2, 1

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, gamma):  # noqa: ARG002
            self.calls += 1
            return torch.zeros_like(x[:, :1])

    sched = linear_schedule(40)
    for name, cls in SAMPLER_STEPS.items():
        stepper = cls() if name == "ddpm" else cls(7)
        net = Counting()
        run_sampler(stepper, net, torch.zeros(1, 1, 8, 8), sched, guidance="none")
        assert net.calls == len(stepper.timesteps) == (40 if name == "ddpm" else 7), name


def test_sampler_config_resolution_order_and_errors():
    from piddpm.diffusion import SamplerConfig, resolve_sampler_config

    model_sampler = {"kind": "ddim", "num_steps": 20, "eta": 10.0, "note": "validation"}
    restore_defaults = {"eta": 20.0, "lam": 0.4, "tile": 256, "steps": 12, "std_scale": 3.0}
    cfg = resolve_sampler_config({"eta": None, "lam": 0.1}, model_sampler, restore_defaults)
    # call > restore_defaults > the model's sampler section > SamplerConfig defaults
    assert (cfg.sampler, cfg.steps, cfg.eta, cfg.lam, cfg.regulariser) == (
        "ddim",
        12,
        20.0,
        0.1,
        "l1",
    )
    assert cfg == resolve_sampler_config({"lambda": 0.1}, model_sampler, restore_defaults)
    assert resolve_sampler_config() == SamplerConfig()
    assert SamplerConfig(samples=3).resolved_eta_ddim() == 1.0
    assert SamplerConfig(samples=3, eta_ddim=0.0).resolved_eta_ddim() == 0.0
    assert SamplerConfig(sampler="ddpm", steps=5).resolved_steps(200) == 200
    assert SamplerConfig().resolved_guidance("ddpm") == "none"
    assert SamplerConfig().resolved_guidance("pi-ddpm") == "learned"
    # an unknown sampler in an old model file falls back to the default; a call's is refused
    assert resolve_sampler_config({}, {"sampler": "plms"}).sampler == "ddim"
    with pytest.raises(PiddpmError, match=r"sampler 'plms'.*'ddim', 'ddpm' or 'dpm-solver\+\+'"):
        resolve_sampler_config({"sampler": "plms"})
    with pytest.raises(PiddpmError, match="steps 0"):
        resolve_sampler_config({"steps": 0})
    with pytest.raises(PiddpmError, match="bogus"):
        resolve_sampler_config({"bogus": 1})


def test_diffusion_imports_neither_networks_nor_training():
    import subprocess
    import sys

    code = (
        "import sys, piddpm.diffusion; "
        "bad = [m for m in sys.modules if m.startswith(('piddpm.networks', 'piddpm.training'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
