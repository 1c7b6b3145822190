"""Tests of piddpm.networks: the conditioned U-Net, presets, padding and model files."""

from __future__ import annotations

import json

import pytest
import torch

from piddpm import PiddpmError
from piddpm.networks import (
    PRESETS,
    UNet,
    build_unet,
    crop_padding,
    load_model,
    pad_to_multiple,
    save_model,
)


def small_net(**kw) -> UNet:
    torch.manual_seed(0)
    opts = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,))
    opts.update(kw)
    return build_unet("tiny", **opts)


@pytest.mark.parametrize("shape", [(37, 45), (64, 64), (5, 9), (1, 1)])
def test_pad_to_multiple_round_trip_for_odd_sizes(shape):
    x = torch.randn(2, 1, *shape)
    padded, info = pad_to_multiple(x, 8)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert padded.shape[-2] - shape[0] < 8 and padded.shape[-1] - shape[1] < 8
    torch.testing.assert_close(crop_padding(padded, info), x, rtol=0, atol=0)


def test_reflect_padding_mirrors_the_border():
    x = (
        torch.arange(6.0).reshape(1, 1, 1, 6).expand(1, 1, 4, 6)
    )  # width 6 -> 8: one column each side
    padded, info = pad_to_multiple(x, 4)
    assert info == (0, 0, 1, 1)
    assert (
        padded[0, 0, 0, 0].item() == 1.0 and padded[0, 0, 0, -1].item() == 4.0
    )  # reflect, not repeat


def test_network_shapes_for_odd_sizes_via_padding():
    net = small_net().eval()
    x = torch.randn(2, 2, 37, 45)
    xp, info = net.pad_to_multiple(x)
    with torch.no_grad():
        out = net.crop_padding(net(xp, torch.tensor([0.3, 0.9])), info)
    assert out.shape == (2, 2, 37, 45)
    with pytest.raises(PiddpmError, match="multiple of 4"):
        net(x, torch.tensor([0.3, 0.9]))


def test_conditioning_changes_the_output_and_unconditioned_ignores_gamma():
    net = small_net().eval()
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([0.999]))
        b = net(x, torch.tensor([0.5]))
        c = net(x, torch.tensor([0.9985]))  # close noise levels are told apart too
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    assert (a - c).abs().max() > 0
    with pytest.raises(PiddpmError, match="gamma"):
        net(x)
    plain = small_net(conditioned=False, in_channels=1, out_channels=1).eval()
    assert plain.embed is None and all("film" not in k for k in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x[:, :1], None), plain(x[:, :1], torch.tensor([0.1])))


def test_batch_elements_are_independent():
    # GroupNorm normalises per sample: one image's output must not depend on its batch mates
    net = small_net().eval()
    x = torch.randn(3, 2, 16, 16)
    g = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        full = net(x, g)
        single = net(x[1:2], g[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_a_shared_noise_level_gives_what_each_sample_alone_gives(norm):
    # inference with one gamma for the batch embeds it once and (layer norm) folds the FiLM
    # modulation into the norm's affine; the result equals the per-sample computation
    net = small_net(norm=norm, attention_levels=()).eval()
    x = torch.randn(3, 2, 16, 16)
    g = torch.full((3,), 0.4)
    with torch.no_grad():
        shared = net(x, g)
        alone = torch.cat([net(x[i : i + 1], g[i : i + 1]) for i in range(3)])
        net.train()  # the training path: per-sample embedding, FiLM as a separate affine
        unfolded = net(x, g)
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared, unfolded, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared[0], net.eval()(x[:1], torch.tensor([0.9]))[0], atol=1e-3)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_inference_without_gradients_equals_the_gradient_path(norm):
    # without autograd the activations run in place on temporaries; with norm "none" the
    # block input reaches the first activation unchanged and must not be overwritten
    net = small_net(norm=norm, attention_levels=()).eval()
    x = torch.randn(2, 2, 16, 16)
    g = torch.tensor([0.3, 0.7])
    with_grad = net(x, g)
    with torch.no_grad():
        without = net(x, g)
    with torch.inference_mode():
        inference = net(x, g)
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(inference, with_grad.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "preset,low,high",
    [("tiny", 0.3e6, 1.5e6), ("small", 3e6, 8e6), ("paper", 40e6, 120e6)],
)
def test_preset_parameter_counts_are_in_the_expected_ranges(preset, low, high):
    net = build_unet(preset)
    assert low < net.num_parameters() < high
    assert net.downsample_factor == 2 ** (len(PRESETS[preset]["channel_mults"]) - 1)


def test_preset_channel_options():
    net = build_unet("tiny", 2, 1)
    assert net.out_channels == 1 and net.conv_out.out_channels == 1
    net = build_unet("tiny", norm="instance", activation="softplus", base_channels=8)
    assert isinstance(net.act_out, torch.nn.Softplus)
    assert net.norm_out.num_groups == net.norm_out.num_channels  # one channel per group
    with pytest.raises(PiddpmError, match="preset"):
        build_unet("huge")
    with pytest.raises(PiddpmError):
        build_unet("tiny", norm="batch")
    with pytest.raises(PiddpmError):
        build_unet("tiny", attention_levels=(7,))
    with pytest.raises(PiddpmError):
        build_unet("tiny", bogus_option=3)


def test_gradient_reaches_every_parameter():
    net = small_net()
    x = torch.randn(2, 2, 16, 16)
    loss = net(x, torch.tensor([0.3, 0.7])).square().mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path):
    net = small_net().eval()
    extra = {"method": "pi-ddpm", "schedule": {"kind": "cosine", "T": 2000}}
    w_path, j_path = save_model(tmp_path / "model", net, extra)
    assert w_path.name == "model.safetensors" and j_path.name == "model.json"
    assert not list(tmp_path.glob("*.tmp"))
    x, g = torch.randn(1, 2, 16, 16), torch.tensor([0.4])
    for path in (tmp_path / "model", j_path, w_path):
        loaded, config = load_model(path)
        assert config == extra and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, g), net(x, g), rtol=0, atol=0)
    doc = json.loads(j_path.read_text())
    assert doc["network"]["base_channels"] == 8 and doc["num_parameters"] == net.num_parameters()


def test_load_refuses_weights_that_do_not_match_the_config(tmp_path):
    save_model(tmp_path / "a", small_net(), {})
    save_model(tmp_path / "b", small_net(base_channels=16), {})
    # b's config with a's weights: every conv has the wrong shape
    (tmp_path / "b.safetensors").replace(tmp_path / "c.safetensors")
    (tmp_path / "a.safetensors").replace(tmp_path / "b.safetensors")
    with pytest.raises(PiddpmError, match=r"do not match the network in .*b\.json"):
        load_model(tmp_path / "b")
    # a structural difference (no attention) gives unexpected tensors
    save_model(tmp_path / "d", small_net(attention_levels=()), {})
    (tmp_path / "c.safetensors").replace(tmp_path / "d.safetensors")
    with pytest.raises(PiddpmError, match="unexpected|missing|shape"):
        load_model(tmp_path / "d.json")


def test_load_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PiddpmError, match="not found"):
        load_model(tmp_path / "nothing")
    save_model(tmp_path / "m", small_net(), {})
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(PiddpmError, match="not valid JSON"):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PiddpmError, match="not a piddpm model"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "n", small_net(), {})
    (tmp_path / "n.safetensors").write_bytes(b"garbage")
    with pytest.raises(PiddpmError, match="unreadable"):
        load_model(tmp_path / "n")


def test_save_refuses_non_json_config(tmp_path):
    with pytest.raises(PiddpmError, match="JSON"):
        save_model(tmp_path / "m", small_net(), {"tensor": torch.zeros(1)})


def _randomised(net):
    """Random affine parameters in the norms too, so the test sees what a trained net does."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_per_pixel_norm_network_output_on_a_crop_agrees_with_the_whole_image(norm):
    torch.manual_seed(0)
    net = _randomised(build_unet("tiny", 2, 2, norm=norm))
    assert net.tile_invariant
    r = net.receptive_radius()
    # a 256^2 image of a bright object on a dark background, and a crop at a multiple of 8
    x = torch.randn(1, 2, 256, 256) * 0.1
    x[:, :, 150:200, 40:90] += 2.0
    with torch.no_grad():
        whole = net(x, 0.5)
        y0, x0, size = 16, 24, 232  # crop (16..248, 24..256) - offsets multiples of 8
        crop = net(x[..., y0 : y0 + size, x0 : x0 + size], 0.5)
    # the crop's interior: farther than the receptive radius from every crop edge that is not
    # also an edge of the whole image
    inner_whole = whole[..., y0 + r : y0 + size - r, x0 + r : 256]
    inner_crop = crop[..., r : size - r, r:]
    assert inner_crop.numel() > 0
    rel = (inner_crop - inner_whole).abs().max() / inner_whole.abs().max()
    assert rel < 1e-4


def test_group_norm_output_on_a_crop_depends_on_the_rest_of_the_image():
    """The failure that per-pixel norms fix: GroupNorm statistics are taken over the tile."""
    torch.manual_seed(0)
    net = _randomised(build_unet("tiny", 2, 2, norm="group"))
    assert not net.tile_invariant
    x = torch.randn(1, 2, 256, 256) * 0.1
    x[:, :, 150:200, 40:90] += 2.0
    with torch.no_grad():
        whole = net(x, 0.5)
        crop = net(x[..., 0:128, 128:256], 0.5)  # background only: no bright object
    diff = (crop[..., 48:80, 48:80] - whole[..., 48:80, 176:208]).abs().max()
    assert diff / whole.abs().max() > 1e-2


def test_receptive_radius_bounds_the_influence_of_a_distant_pixel():
    """A pixel beyond the stated radius does not change the output; one inside does."""
    torch.manual_seed(0)
    net = _randomised(build_unet("tiny", 1, 1, conditioned=False, norm="none"))
    r = net.receptive_radius()
    size = 2 * r + 64
    x = torch.zeros(1, 1, size, size)
    with torch.no_grad():
        base = net(x, None)
        c = size // 2
        far = x.clone()
        far[..., c, c + r + 9] = 5.0
        near = x.clone()
        near[..., c, c + r // 2] = 5.0
        assert torch.equal(net(far, None)[..., c, c], base[..., c, c])
        assert (net(near, None)[..., c, c] - base[..., c, c]).abs() > 0
