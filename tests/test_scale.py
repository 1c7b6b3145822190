"""Out-of-core restore (:mod:`piddpm.restore.stream`): chunked equals in-memory, resume,
dask.distributed, the OME-Zarr output and its provenance."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr

from piddpm import PiddpmError
from piddpm.io import read_image, write_zarr
from piddpm.restore import restore
from piddpm.restore.stream import chunk_regions, plane_ranges, restore_to_zarr


def gaussian_psf(size=9, sigma=1.3):
    y, x = np.mgrid[:size, :size] - size // 2
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def specimen(shape=(256, 256), seed=0):
    """Blurred beads on a background with shot-like noise (positive, uint16-like)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    for _ in range(int(np.prod(shape[-2:]) / 400)):
        img[(..., *(int(rng.integers(0, s)) for s in shape[-2:]))] += rng.uniform(200, 800)
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img, (0,) * (img.ndim - 2) + (1.5, 1.5)) * 20 + 100
    return rng.poisson(img).astype(np.float32)


def level0(path, name="0"):
    return np.asarray(zarr.open_group(str(path), mode="r")[name][...])


RL = dict(method="rl", psf=gaussian_psf(), tile=64, overlap=8)


def test_chunk_regions_are_unions_of_the_planes_tiles():
    from piddpm.tiling import axis_starts

    for length, chunk, tile, overlap in [(300, 100, 64, 8), (512, 128, 256, 64), (50, 16, 64, 8)]:
        starts = axis_starts(length, tile, overlap)
        regions = chunk_regions(length, chunk, tile, overlap)
        assert regions[0][0] == 0 and regions[-1][1] == length
        for c0, c1, r0, r1 in regions:
            assert r0 <= c0 < c1 <= r1 and r0 in starts
            # the untapered region border lies at least `overlap` pixels outside the chunk
            assert r0 == 0 or c0 - r0 >= overlap
            assert r1 == length or r1 - c1 >= overlap


def test_chunk_regions_with_a_mirrored_border_keep_the_grown_planes_tiles():
    from piddpm.tiling import axis_starts

    for length, chunk, tile, overlap, pad in [
        (300, 100, 64, 8, 32), (1024, 256, 256, 64, 32), (512, 128, 256, 64, 16),
        (50, 16, 64, 8, 32), (300, 16, 64, 16, 32), (300, 16, 48, 8, 32),
    ]:  # fmt: skip
        starts = axis_starts(length + 2 * pad, tile, overlap)
        t = min(tile, length + 2 * pad)
        regions = chunk_regions(length, chunk, tile, overlap, pad)
        assert regions[0][2] == 0 and regions[-1][3] == length
        for c0, c1, r0, r1 in regions:
            assert r0 <= c0 < c1 <= r1
            # the region, mirrored where it touches a border, is a run of the grown plane's tiles
            g0 = 0 if r0 == 0 else r0 + pad
            g1 = length + 2 * pad if r1 == length else r1 + pad
            own = [g0 + s for s in axis_starts(g1 - g0, tile, overlap)]
            assert set(own) <= set(starts) and own[-1] + t == g1
            assert all(s in own for s in starts if s < c1 + pad and s + t > c0 + pad)
            # a mirrored side holds the rows it mirrors, as the whole plane does
            assert r0 > 0 or r1 >= min(pad + 1, length)
            assert r1 < length or r0 <= max(length - 1 - pad, 0)


def test_whole_plane_percentiles_equal_the_in_memory_rule_also_when_subsampled(monkeypatch):
    from piddpm import normalisation

    plane = specimen((130, 170))
    p = (0.1, 99.9)
    assert plane_ranges(plane, (), p, band_px=1000) == [
        list(normalisation.intensity_range(plane, p))
    ]
    monkeypatch.setattr(normalisation, "MAX_PERCENTILE_SAMPLES", 997)  # subsample: k = 23
    got = plane_ranges(plane, (), p, band_px=1000)[0]
    assert got == list(normalisation.intensity_range(plane, p, max_samples=997))


def test_chunked_rl_equals_in_memory_and_writes_ngff_with_provenance(tmp_path):
    img = specimen((300, 280))
    src = write_zarr(tmp_path / "in.zarr", img, axes="YX", pixel_size_um=(None, 0.1, 0.1))
    ref = restore(read_image(src), progress=False, **RL)
    out = restore_to_zarr(src, tmp_path / "out.zarr", chunk=100, progress=False, **RL)
    np.testing.assert_allclose(level0(out), ref.mean, rtol=0, atol=1e-5)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["axes"][0]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[0.1, 0.1], [0.2, 0.2], [0.4, 0.4]]
    assert level0(out, "1").shape == (150, 140) and level0(out, "2").shape == (75, 70)
    np.testing.assert_allclose(
        level0(out, "1"), ref.mean.reshape(150, 2, 140, 2).mean((1, 3)), atol=1e-4
    )
    meta = attrs["piddpm"]
    assert meta["method"] == "rl" and meta["steps"] == ref.metadata["steps"]
    assert meta["normalisation"]["ranges"] == ref.metadata["normalisation"]["ranges"]
    assert meta["stream"]["chunks"] == 9 and attrs["piddpm_stream"]["complete"] is True
    back = read_image(out)
    assert back.axes == "YX" and back.pixel_size_um[1] == pytest.approx(0.1)
    assert back.metadata["metadata"]["method"] == "rl"
    json.dumps(meta)


def test_chunked_stack_keeps_per_plane_ranges_and_rl_counts(tmp_path):
    stack = np.stack([specimen((160, 150), seed=1), 3 * specimen((160, 150), seed=2) + 50])
    ref = restore(stack, axes="ZYX", progress=False, **RL)
    out = restore_to_zarr(stack, tmp_path / "s.zarr", axes="ZYX", chunk=64, progress=False, **RL)
    np.testing.assert_allclose(level0(out), ref.mean, rtol=0, atol=1e-4)
    meta = dict(zarr.open_group(str(out), mode="r").attrs)["piddpm"]
    assert meta["normalisation"]["ranges"] == ref.metadata["normalisation"]["ranges"]


@pytest.mark.parametrize(
    "size, chunk, kwargs",
    [
        (384, 128, dict(model="unet-widefield")),  # the model's tile 256, overlap 64
        # batch_size 1: a batch of other tiles changes the convolutions' float round-off
        (256, 128, dict(model="pi-ddpm-widefield", steps=3, tile=128, overlap=32, batch_size=1)),
        # tiles barely larger than the mirrored border, chunks smaller than both
        (160, 24, dict(model="unet-widefield", tile=64, overlap=16, batch_size=1)),
    ],
    ids=["unet", "ddim", "small-tiles"],
)
def test_chunked_learned_restore_equals_in_memory(tmp_path, size, chunk, kwargs):
    img = specimen((size, size), seed=3)
    with pytest.warns(UserWarning, match="no microscope"):
        ref = restore(img, progress=False, device="cpu", **kwargs)
    with pytest.warns(UserWarning, match="no microscope"):
        out = restore_to_zarr(
            img, tmp_path / "o.zarr", chunk=chunk, progress=False, device="cpu", **kwargs
        )
    np.testing.assert_allclose(level0(out), ref.mean, rtol=0, atol=1e-5)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    img = specimen((200, 200), seed=4)
    full = restore_to_zarr(img, tmp_path / "full.zarr", chunk=64, progress=False, **RL)
    calls = []

    def stop_after_three(done, total):
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    part = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        restore_to_zarr(img, part, chunk=64, progress=False, on_chunk=stop_after_three, **RL)
    assert dict(zarr.open_group(str(part), mode="r").attrs)["piddpm_stream"]["complete"] is False
    with pytest.raises(PiddpmError, match="--resume"):
        restore_to_zarr(img, part, chunk=64, progress=False, **RL)
    with pytest.raises(PiddpmError, match="other settings.*chunk"):
        restore_to_zarr(img, part, chunk=32, resume=True, progress=False, **RL)
    done = []
    restore_to_zarr(
        img, part, chunk=64, resume=True, progress=False, on_chunk=lambda d, t: done.append(d), **RL
    )
    assert done[0] == 4 and done[-1] == 16  # 4 x 4 chunks, 3 already there
    np.testing.assert_array_equal(level0(part), level0(full))
    np.testing.assert_array_equal(level0(part, "2"), level0(full, "2"))


def test_output_refusals(tmp_path):
    img = specimen((64, 64))
    src = write_zarr(tmp_path / "in.zarr", img, axes="YX")
    with pytest.raises(PiddpmError, match="is the input"):
        restore_to_zarr(src, src, resume=True, **RL)
    with pytest.raises(PiddpmError, match="nothing to resume"):  # never replaced by resume
        restore_to_zarr(img, src, resume=True, **RL)
    assert read_image(src).data.shape == (64, 64)
    with pytest.raises(PiddpmError, match="does not exist"):
        restore_to_zarr(img, tmp_path / "no" / "o.zarr", **RL)
    with pytest.raises(PiddpmError, match="rl-3d"):
        restore_to_zarr(img, tmp_path / "o.zarr", method="rl-3d")
    with pytest.raises(PiddpmError, match="cannot be written as OME-Zarr"):  # Q: no NGFF axis
        restore_to_zarr(np.zeros((2, 64, 64)), tmp_path / "o.zarr", axes="QYX", **RL)
    with pytest.raises(PiddpmError, match="colour"):
        restore_to_zarr(np.zeros((64, 64, 3)), tmp_path / "o.zarr", axes="YXS", **RL)
    with pytest.raises(PiddpmError, match="std .* is the output store"):
        restore_to_zarr(img, tmp_path / "o.zarr", std_path=tmp_path / "o.zarr", **RL)
    with pytest.raises(PiddpmError, match="samples 2 or more"):
        restore_to_zarr(img, tmp_path / "o.zarr", std_path=tmp_path / "s.zarr", **RL)
    with pytest.raises(PiddpmError, match="rl is deterministic"):
        restore_to_zarr(img, tmp_path / "o.zarr", std_path=tmp_path / "s.zarr", samples=2, **RL)
    with pytest.raises(PiddpmError, match="residual_path"):
        restore_to_zarr(img, tmp_path / "o.zarr", residual=True, **RL)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "s.zarr").exists()


def test_std_and_residual_stores_equal_in_memory_and_resume(tmp_path):
    """--uncertainty / --residual when streaming: each map is an OME-Zarr store of its own
    (axes, scale, pyramid, provenance as the mean's), equal to the in-memory maps, and an
    interrupted run resumes every output."""
    img = specimen((192, 160), seed=7)
    kw = dict(model="pi-ddpm-widefield", steps=2, samples=2, tile=128, overlap=32)
    kw |= dict(batch_size=1, psf=gaussian_psf(), device="cpu", pixel_size_um=0.1)
    with pytest.warns(UserWarning, match="no microscope"):
        ref = restore(img, progress=False, residual=True, **kw)
    out, std, res = (tmp_path / f"{n}.zarr" for n in ("o", "std", "res"))
    stores = dict(std_path=std, residual_path=res)

    def stop_after_one(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="no microscope"), pytest.raises(KeyboardInterrupt):
        restore_to_zarr(img, out, chunk=96, progress=False, on_chunk=stop_after_one, **stores, **kw)
    with pytest.raises(PiddpmError, match=r"other settings \(outputs, .*restore\.residual"):
        restore_to_zarr(img, out, chunk=96, resume=True, std_path=std, **kw)
    done = []
    restore_to_zarr(
        img, out, chunk=96, resume=True, progress=False, on_chunk=lambda d, t: done.append(d),
        **stores, **kw,
    )  # fmt: skip
    assert done == [2, 3, 4]  # 2 x 2 chunks, the first one already there in every store
    for path, want in ((out, ref.mean), (std, ref.std), (res, ref.residual)):
        np.testing.assert_allclose(level0(path), want, rtol=0, atol=1e-5)
        assert level0(path, "1").shape == (96, 80) and level0(path, "2").shape == (48, 40)
    attrs = {p: dict(zarr.open_group(str(p), mode="r").attrs) for p in (out, std, res)}
    assert attrs[std]["multiscales"][0]["datasets"] == attrs[out]["multiscales"][0]["datasets"]
    assert attrs[std]["piddpm"]["content"].startswith("per-pixel std")
    assert attrs[res]["piddpm"]["content"].startswith("data consistency")
    assert attrs[std]["piddpm"]["normalisation"] == attrs[out]["piddpm"]["normalisation"]
    assert set(attrs[out]["piddpm"]["stream"]["outputs"]) == {"mean", "std", "residual"}
    assert attrs[std]["piddpm_stream"] == {"part_of": str(out), "output": "std", "complete": True}
    assert read_image(std).axes == "YX" and read_image(res).pixel_size_um[1] == pytest.approx(0.1)
    import shutil

    shutil.rmtree(std)
    with pytest.raises(PiddpmError, match="std .*store of .*o.zarr.*--overwrite"):
        restore_to_zarr(img, out, chunk=96, resume=True, **stores, **kw)


def test_cli_streams_uncertainty_and_residual_stores(tmp_path, capsys):
    from piddpm.cli import main
    from piddpm.io import write_tiff

    img = specimen((96, 80), seed=8)
    src = write_zarr(tmp_path / "in.zarr", img, axes="YX", pixel_size_um=(None, 0.1, 0.1))
    psf = tmp_path / "psf.tif"
    write_tiff(psf, gaussian_psf(), axes="YX")
    rl = ["--method", "rl", "--psf", str(psf), "--tile", "64", "--overlap", "8", "--chunk", "48"]
    run = ["restore", str(src), "-o", str(tmp_path / "o.zarr"), *rl, "--no-progress"]
    assert main([*run, "--residual", str(tmp_path / "r.tif")]) == 2
    assert "--residual " in capsys.readouterr().err and not (tmp_path / "o.zarr").exists()
    assert main([*run, "--residual", str(tmp_path / "r.zarr")]) == 0
    assert "also" in capsys.readouterr().out
    ref = restore(read_image(src), progress=False, residual=True, **RL)
    np.testing.assert_allclose(level0(tmp_path / "r.zarr"), ref.residual, rtol=0, atol=1e-5)
    assert main([*run, "--residual", str(tmp_path / "r.zarr"), "--resume"]) == 0  # complete
    assert main([*run, "--residual", str(tmp_path / "r.zarr")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_cli_refuses_workers_below_one_for_any_input(tmp_path, capsys):
    """``--workers 0`` is an error naming the flag, also for TIFF in and out (it used to
    be taken as "no workers" and the image restored in memory)."""
    from piddpm.cli import main
    from piddpm.io import write_tiff

    src = tmp_path / "in.tif"
    write_tiff(src, specimen((64, 64), seed=3), axes="YX")
    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--method", "rl", "--workers", "0"]) == 2
    assert "--workers must be a positive integer, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_input_axes_in_another_order_are_read_lazily_and_written_tczyx(tmp_path):
    """A ZCYX input (a plain Zarr array naming its axes) streams into a CZYX store equal to
    the in-memory restore of the input, transposed; no read is larger than a region."""
    stack = np.stack([[specimen((72, 64), seed=10 * z + c) for c in range(3)] for z in range(2)])
    src = tmp_path / "zc.zarr"
    arr = zarr.open_array(str(src), mode="w", shape=stack.shape, chunks=(1, 1, 32, 32),
                          dtype="float32", zarr_format=2)  # fmt: skip
    arr[...] = stack
    arr.attrs["axes"] = "ZCYX"
    ref = restore(stack, axes="ZCYX", progress=False, **RL)
    out = restore_to_zarr(src, tmp_path / "o.zarr", chunk=32, progress=False, **RL)
    np.testing.assert_allclose(level0(out), ref.mean.transpose(1, 0, 2, 3), rtol=0, atol=1e-5)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    meta = attrs["piddpm"]
    assert meta["input_axes"] == "ZCYX" and meta["axes"] == "CZYX"
    assert "ZCYX written in the OME-Zarr order CZYX" in meta["stream"]["axis_order"]
    assert read_image(out).axes == "CZYX"

    class Recorder:  # an array that records the size of every read
        shape, dtype, ndim = stack.shape, stack.dtype, stack.ndim
        largest = 0

        def __getitem__(self, index):
            part = stack[index]
            Recorder.largest = max(Recorder.largest, part.size)
            return part

    again = restore_to_zarr(Recorder(), tmp_path / "r.zarr", axes="ZCYX", chunk=32,
                            progress=False, **RL)  # fmt: skip
    np.testing.assert_array_equal(level0(again), level0(out))
    assert Recorder.largest == 72 * 64  # one plane (the percentile pass), never the stack


def test_transposed_diffusion_stack_keeps_each_planes_noise(tmp_path):
    """Each plane's noise is addressed by its index in the input's own order, so a streamed
    ZCYX stack equals the in-memory restore of the ZCYX stack (transposed), sample by sample."""
    stack = np.stack([[specimen((64, 64), seed=10 * z + c) for c in range(2)] for z in range(2)])
    kw = dict(model="pi-ddpm-widefield", steps=2, tile=64, overlap=16, batch_size=1)
    kw |= dict(device="cpu", pixel_size_um=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the sampling assumed
        ref = restore(stack, axes="ZCYX", progress=False, **kw)
        out = restore_to_zarr(stack, tmp_path / "o.zarr", axes="ZCYX", chunk=64, progress=False,
                              **kw)  # fmt: skip
    np.testing.assert_allclose(level0(out), ref.mean.transpose(1, 0, 2, 3), rtol=0, atol=1e-5)


def test_two_local_distributed_workers_give_the_same_output(tmp_path):
    pytest.importorskip("distributed")
    img = specimen((200, 180), seed=5)
    src = write_zarr(tmp_path / "in.zarr", img, axes="YX")
    ref = restore_to_zarr(src, tmp_path / "one.zarr", chunk=64, progress=False, **RL)
    out = restore_to_zarr(src, tmp_path / "two.zarr", chunk=64, workers=2, progress=False, **RL)
    np.testing.assert_array_equal(level0(out), level0(ref))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="rl", psf=gaussian_psf()),
        dict(model="unet-widefield"),
        dict(model="pi-ddpm-widefield", steps=3, batch_size=1),
    ],
    ids=["rl", "unet", "ddim"],
)
def test_chunked_equals_in_memory_on_a_1024_plane(tmp_path, kwargs):
    img = specimen((1024, 1024), seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the sampling assumed
        ref = restore(img, progress=False, device="cpu", **kwargs)
        out = restore_to_zarr(
            img, tmp_path / "o.zarr", chunk=256, progress=False, device="cpu", **kwargs
        )
    np.testing.assert_allclose(level0(out), ref.mean, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# GPUs and workers (no GPU needed: the device rule is pure, the wiring runs with fake GPUs)


def test_worker_device_pins_gpu_requests_round_robin():
    from piddpm.restore.stream_devices import worker_device

    assert [worker_device("auto", i, 2) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0",
    ]  # fmt: skip
    assert worker_device("cuda", 5, 4) == "cuda:1" and worker_device(None, 1, 1) == "cuda:0"
    assert worker_device("cpu", 1, 2) == "cpu" and worker_device("mps", 0, 1) == "mps"
    assert worker_device("cuda:1", 0, 2) == "cuda:1"  # an explicit GPU is used as given
    assert worker_device("auto", 1, 0) == "auto" and worker_device("cuda", 1, 0) == "cuda"
    assert worker_device("auto", None, 2) == "auto"  # not a pinned worker
    with pytest.raises(ValueError, match="worker index"):
        worker_device("auto", -1, 2)


def test_plan_devices_for_local_and_existing_clusters():
    from piddpm.restore.stream_devices import plan_devices, sharing_notes

    def report(name, host="h", gpus=2, env=None):
        return {"name": name, "host": host, "gpus": gpus, "cuda_visible": env}

    local = [report(str(i)) for i in (10, 2, 0, 1)]  # numeric names, in any order
    plan = plan_devices("auto", local, local=True)
    assert plan == {"0": "cuda:0", "1": "cuda:1", "2": "cuda:0", "10": "cuda:0"}
    (note,) = sharing_notes(plan, local)
    assert note.startswith("h: 4 workers share 2 GPU(s)") and "GPU 1: workers 1 (cuda:1)" in note
    assert plan_devices("cpu", local, local=True) == dict.fromkeys(plan, "cpu")
    assert sharing_notes(dict.fromkeys(plan, "cpu"), local) == []
    # an existing cluster: ranked per host when the workers see all GPUs ...
    spread = [report("tcp://a:2"), report("tcp://a:1"), report("tcp://b:1", "b", gpus=1)]
    plan = plan_devices("cuda", spread, local=False)
    assert plan == {"tcp://a:1": "cuda:0", "tcp://a:2": "cuda:1", "tcp://b:1": "cuda:0"}
    assert sharing_notes(plan, spread) == []
    # ... and the first visible GPU where the launcher set CUDA_VISIBLE_DEVICES (dask-cuda)
    rotated = [report("0", env="0,1"), report("1", env="1,0"), report("2", gpus=1, env="3")]
    plan = plan_devices("auto", rotated, local=False)
    assert plan == {"0": "cuda:0", "1": "cuda:0", "2": "cuda:0"}
    assert sharing_notes(plan, rotated) == []  # GPUs 0, 1 and 3: one worker each
    same = [report("0", env="1,0"), report("1", env="1,0")]
    assert sharing_notes(plan_devices("auto", same, local=False), same) == [
        "h: 2 workers share 1 GPU(s), one model copy per worker on its GPU "
        "(GPU 1: workers 0 (cuda:0), 1 (cuda:0))"
    ]


def test_worker_options_are_checked_before_any_work(tmp_path):
    img = specimen((64, 64))
    with pytest.raises(PiddpmError, match="^workers must be a positive integer, got 0$"):
        restore_to_zarr(img, tmp_path / "o.zarr", workers=0, **RL)
    with pytest.raises(PiddpmError, match="not both"):
        restore_to_zarr(img, tmp_path / "o.zarr", workers=2, cluster="tcp://x:8786", **RL)
    assert not (tmp_path / "o.zarr").exists()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA devices that are the CPU: torch reports them, every restore runs on the CPU
    and reports the device it was given (what a GPU run records), and each call's device is
    kept in the returned list."""
    import torch

    import piddpm.restore

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    real, seen = piddpm.restore.restore, []

    def on_the_cpu(image, *, device="auto", **kw):
        device = "cuda" if device in (None, "auto") else device
        seen.append(device)
        res = real(image, device="cpu" if device.startswith("cuda") else device, **kw)
        res.metadata["device"] = device
        return res

    monkeypatch.setattr(piddpm.restore, "restore", on_the_cpu)
    return seen


@pytest.mark.parametrize(
    "where, device",
    [("local", "auto"), ("existing", "cuda"), ("existing-env", "auto"), ("local", "cpu")],
)
def test_distributed_workers_use_one_gpu_each(tmp_path, monkeypatch, caplog, fake_gpus,
                                              where, device):  # fmt: skip
    """Each worker restores on its own GPU, round-robin; sharing is logged; the provenance
    records the device of every worker's chunks. The workers are in-process threads here, so
    the fake GPUs reach them (a real run uses worker processes)."""
    distributed = pytest.importorskip("distributed")
    import logging

    threads = dict(processes=False, threads_per_worker=1, dashboard_address=None)
    img = specimen((160, 160), seed=11)
    ref = restore_to_zarr(img, tmp_path / "one.zarr", chunk=64, progress=False, **RL)
    fake_gpus.clear()
    kw = dict(chunk=64, progress=False, device=device, **RL)
    caplog.set_level(logging.INFO, logger="piddpm.restore.stream")
    if where == "local":  # restore_to_zarr's own LocalCluster, with threads for processes
        real = distributed.LocalCluster
        monkeypatch.setattr(
            distributed, "LocalCluster", lambda n_workers, **_: real(n_workers=n_workers, **threads)
        )
        out = restore_to_zarr(img, tmp_path / "o.zarr", workers=3, **kw)
    else:
        if where == "existing-env":  # as a launcher sets it: this worker's GPU listed first
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
        with distributed.LocalCluster(n_workers=2, **threads) as cluster:
            out = restore_to_zarr(img, tmp_path / "o.zarr", cluster=cluster.scheduler_address,
                                  **kw)  # fmt: skip
    np.testing.assert_array_equal(level0(out), level0(ref))
    stream = dict(zarr.open_group(str(out), mode="r").attrs)["piddpm"]["stream"]
    by_worker = {d["worker"]: d["device"] for d in stream["devices"]}
    assert sum(d["chunks"] for d in stream["devices"]) == 9  # 3 x 3 chunks
    want = {
        "local": {"0": "cuda:0", "1": "cuda:1", "2": "cuda:0"},
        "existing": {"0": "cuda:0", "1": "cuda:1"},
        "existing-env": {"0": "cuda:0", "1": "cuda:0"},
    }.get(where if device != "cpu" else "", {"0": "cpu", "1": "cpu", "2": "cpu"})
    assert set(by_worker.items()) <= set(want.items())  # a worker may get no chunk
    assert stream["device_assignment"].get("workers", want) == want
    sharing = [r.getMessage() for r in caplog.records if "GPU sharing" in r.getMessage()]
    if where == "local" and device == "auto":
        assert "3 workers share 2 GPU(s)" in sharing[0]
        assert stream["device_assignment"]["sharing"] == [sharing[0].split("GPU sharing: ")[1]]
    elif where == "existing-env":  # both workers list GPU 1 first: they share it
        assert "GPU 1: workers 0 (cuda:0), 1 (cuda:0)" in sharing[0]
    else:
        assert sharing == []
    # the probe chunk in this process (auto -> cuda), then the 9 chunks, each on its GPU
    assert fake_gpus[0] == ("cpu" if device == "cpu" else "cuda") and len(fake_gpus) == 10
    assert set(fake_gpus[1:]) <= set(want.values())
    if device == "cpu":
        assert stream["device_assignment"]["rule"].endswith("the requested device cpu")


def test_in_process_run_records_its_device(tmp_path):
    out = restore_to_zarr(specimen((96, 96)), tmp_path / "o.zarr", chunk=48, progress=False,
                          device="cpu", **RL)  # fmt: skip
    stream = dict(zarr.open_group(str(out), mode="r").attrs)["piddpm"]["stream"]
    assert [(d["worker"], d["device"], d["chunks"]) for d in stream["devices"]] == [
        ("in process", "cpu", 4)
    ]


def test_two_distributed_workers_stream_std_and_residual_as_in_memory(tmp_path):
    """--uncertainty and --residual on a local 2-worker cluster (worker processes, each
    loading the model once): every store equals the in-memory restore."""
    pytest.importorskip("distributed")
    img = specimen((128, 128), seed=12)
    kw = dict(model="pi-ddpm-widefield", steps=2, samples=2, tile=64, overlap=16, batch_size=1)
    kw |= dict(psf=gaussian_psf(), device="cpu", pixel_size_um=0.1)
    with pytest.warns(UserWarning, match="no microscope"):
        ref = restore(img, progress=False, residual=True, **kw)
    out, std, res = (tmp_path / f"{n}.zarr" for n in ("o", "std", "res"))
    with pytest.warns(UserWarning, match="no microscope"):  # the probe chunk, in this process
        restore_to_zarr(img, out, chunk=64, workers=2, std_path=std, residual_path=res,
                        progress=False, **kw)  # fmt: skip
    for path, want in ((out, ref.mean), (std, ref.std), (res, ref.residual)):
        np.testing.assert_allclose(level0(path), want, rtol=0, atol=1e-5)
        assert dict(zarr.open_group(str(path), mode="r").attrs)["piddpm_stream"]["complete"]
    stream = dict(zarr.open_group(str(std), mode="r").attrs)["piddpm"]["stream"]
    assert {d["worker"] for d in stream["devices"]} <= {"0", "1"}
    assert {d["device"] for d in stream["devices"]} == {"cpu"}
    assert sum(d["chunks"] for d in stream["devices"]) == 4
