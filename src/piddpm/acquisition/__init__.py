"""Image acquisition model: blur operator ``A``, its adjoint, pixel binning and camera noise.

The forward model of a fluorescence camera image is (see ``docs/acquisition.md``)::

    clean    = bin(A gt)                                   # blurred ground truth
    rate     = photons * clean / max(clean) + background  # expected photo-electrons per pixel
    counts   = Poisson(rate) + Normal(0, read_noise^2)    # electrons
    observed = gain * counts + offset                      # ADU, optionally rounded and clipped

``A`` is a same-size 2D convolution with a PSF computed with real FFTs (``torch.fft.rfft2``)
on grids padded to fast FFT sizes. Two boundary models are available:

``"zero"``
    linear convolution of the image extended by zeros, cropped back to ``(H, W)`` (what
    ``scipy.signal.convolve(..., mode="same")`` computes for odd PSF sizes);
``"periodic"``
    circular convolution on the ``(H, W)`` torus.

The PSF centre is the pixel ``(kh // 2, kw // 2)``: a PSF that is 1 there and 0 elsewhere
is the identity. A PSF whose sum is not 1 is used as is (it scales the total flux by its
sum); negative, NaN or infinite PSF values raise :class:`piddpm.PiddpmError`.

Everything is pure torch, batched over ``(B, C, H, W)``, works on CPU and GPU, in float32
and float64, and is differentiable (autograd flows through ``blur`` and ``blur_adjoint``
to both the image and the PSF).

The inverse question, which camera made a given image, is answered by
:func:`estimate_noise` (gain, offset and read noise fitted to raw frames) and
:func:`noise_ranges` (the simulation ranges they imply), in :mod:`.noise_fit`.
"""

from __future__ import annotations

from typing import Literal

import torch

from piddpm import PiddpmError
from piddpm.acquisition.noise_fit import NoiseFit, estimate_noise, noise_ranges

__all__ = [
    "BlurBoundary",
    "Boundary",
    "BlurOperator",
    "NoiseFit",
    "acquire",
    "add_noise",
    "bin_pixels",
    "blur",
    "blur_adjoint",
    "estimate_noise",
    "fast_fft_size",
    "noise_ranges",
]

Boundary = Literal["zero", "periodic"]
_BOUNDARIES = ("zero", "periodic")
#: :func:`blur` also takes ``"reflect"``: the image extended by mirror reflection.
BlurBoundary = Literal[Boundary, "reflect"]

#: A PSF value below ``-_NEG_TOL * max(psf)`` is an error; smaller negative values (FFT
#: round-off of a computed PSF) are accepted and used as they are.
_NEG_TOL = 1e-6


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def fast_fft_size(n: int) -> int:
    """Smallest integer ``>= n`` whose prime factors are 2, 3 and 5 (a fast FFT length).

    Parameters
    ----------
    n : int
        Minimum length (``>= 1``).

    Returns
    -------
    int
        A 5-smooth length ``>= n`` (the same as ``scipy.fft.next_fast_len(n, real=True)``).
    """
    if n < 1:
        raise PiddpmError(f"FFT length must be >= 1, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _check_boundary(boundary: str) -> str:
    if boundary not in _BOUNDARIES:
        raise PiddpmError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
    return boundary


def _as_images(images: torch.Tensor, name: str = "images") -> tuple[torch.Tensor, bool]:
    """Return a floating ``(B, C, H, W)`` view and whether the input was 2D ``(H, W)``."""
    if not isinstance(images, torch.Tensor):
        raise PiddpmError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.is_complex():
        raise PiddpmError(f"{name} must be real, got dtype {images.dtype}")
    if not images.is_floating_point():
        images = images.to(torch.get_default_dtype())
    if images.ndim == 2:
        return images[None, None], True
    if images.ndim != 4:
        raise PiddpmError(
            f"{name} must have shape (B, C, H, W) or (H, W), got shape {tuple(images.shape)}"
        )
    return images, False


def _as_psf(psf, like: torch.Tensor | None = None, *, check: bool = True) -> torch.Tensor:
    """Validate a PSF and return it as a ``(B|1, C|1, kh, kw)`` tensor."""
    if not isinstance(psf, torch.Tensor):
        psf = torch.as_tensor(psf)
    if psf.is_complex():
        raise PiddpmError(f"psf must be real, got dtype {psf.dtype}")
    if like is not None:
        psf = psf.to(device=like.device, dtype=like.dtype)
    elif not psf.is_floating_point():
        psf = psf.to(torch.get_default_dtype())
    if psf.ndim == 2:
        psf = psf[None, None]
    if psf.ndim != 4:
        raise PiddpmError(
            f"psf must have shape (B, 1, kh, kw), (1, 1, kh, kw) or (kh, kw), "
            f"got shape {tuple(psf.shape)}"
        )
    if psf.shape[-1] < 1 or psf.shape[-2] < 1:
        raise PiddpmError(f"psf is empty, got shape {tuple(psf.shape)}")
    if check:
        with torch.no_grad():
            if not bool(torch.isfinite(psf).all()):
                raise PiddpmError(
                    "psf contains NaN or infinite values; expected finite values >= 0"
                )
            peak = psf.abs().amax()
            lowest = psf.amin()
            if float(lowest) < -_NEG_TOL * float(peak):
                raise PiddpmError(
                    f"psf has negative values (min {float(lowest):.3g}, max {float(peak):.3g}); "
                    "an intensity PSF must be >= 0 (clip or re-subtract the background)"
                )
            sums = psf.sum(dim=(-2, -1))
            if bool((sums <= 0).any()):
                raise PiddpmError(
                    "psf sums to zero (for at least one sample); expected a positive sum"
                )
    return psf


def _check_batch(images: torch.Tensor, psf: torch.Tensor) -> None:
    b, c = images.shape[:2]
    pb, pc = psf.shape[:2]
    if pb not in (1, b) or pc not in (1, c):
        raise PiddpmError(
            f"psf shape {tuple(psf.shape)} does not match images shape {tuple(images.shape)}: "
            "expected (B, 1, kh, kw) with the images' batch size B, or (1, 1, kh, kw)"
        )


def _check_fits(image_hw: tuple[int, int], psf_hw: tuple[int, int]) -> None:
    h, w = image_hw
    kh, kw = psf_hw
    if kh > h or kw > w:
        raise PiddpmError(
            f"PSF of size {kh} x {kw} is larger than the image of size {h} x {w}; "
            "crop the PSF (or pad the image) so that the PSF fits inside the image"
        )


def _padded_shape(image_hw: tuple[int, int], psf_hw: tuple[int, int], boundary: str):
    h, w = image_hw
    kh, kw = psf_hw
    if boundary == "periodic":
        return h, w
    return fast_fft_size(h + kh - 1), fast_fft_size(w + kw - 1)


def _otf(psf: torch.Tensor, padded_hw: tuple[int, int]) -> torch.Tensor:
    """rfft2 of the PSF placed on the padded grid with its centre at index ``(0, 0)``.

    Wrapping (rather than cropping) the kernel keeps this exact for any grid at least as
    large as the kernel; the centre ``(kh // 2, kw // 2)`` moves to the origin.
    """
    ph, pw = padded_hw
    kh, kw = psf.shape[-2:]
    grid = psf.new_zeros(psf.shape[:-2] + (ph, pw))
    grid[..., :kh, :kw] = psf
    grid = torch.roll(grid, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(grid)


def _apply(images: torch.Tensor, otf: torch.Tensor, padded_hw, adjoint: bool) -> torch.Tensor:
    h, w = images.shape[-2:]
    ph, pw = padded_hw
    spec = torch.fft.rfft2(images, s=(ph, pw))  # zero-pads at the end when (ph, pw) > (h, w)
    spec = spec * (otf.conj() if adjoint else otf)
    out = torch.fft.irfft2(spec, s=(ph, pw))
    return out[..., :h, :w]


# --------------------------------------------------------------------------------------
# blur operator
# --------------------------------------------------------------------------------------
def blur(images: torch.Tensor, psf, boundary: BlurBoundary = "zero") -> torch.Tensor:
    """Convolve images with a PSF (the forward operator ``A``), same-size output.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W) or (H, W)
        Images in any linear intensity unit; integer input is converted to float.
    psf : Tensor or array, shape (B, 1, kh, kw), (1, 1, kh, kw) or (kh, kw)
        Point spread function, one per sample or shared; centre pixel ``(kh // 2, kw // 2)``.
        Must be finite and ``>= 0``, and no larger than the image. It is not renormalised.
    boundary : {"zero", "periodic", "reflect"}
        ``"zero"``: the image is extended by zeros (linear convolution, cropped);
        ``"periodic"``: circular convolution; ``"reflect"``: the image is extended by mirror
        reflection (edge replication where it is too small to mirror), so a flat image stays
        flat up to its border (the forward model of restore's data-consistency map; no
        adjoint is offered for it).

    Returns
    -------
    Tensor, same shape, dtype and device as ``images``
        ``(A x)[i, j] = sum_{m, n} psf[m, n] x[i + kh//2 - m, j + kw//2 - n]``.
    """
    if boundary == "reflect":
        return _blur_reflect(images, psf)
    return _fft_operator(images, psf, boundary, adjoint=False)


def _fft_operator(images, psf, boundary: str, adjoint: bool) -> torch.Tensor:
    """``A x`` (``adjoint`` False) or ``A^T y`` with a zero or periodic boundary."""
    _check_boundary(boundary)
    x, was2d = _as_images(images)
    k = _as_psf(psf, like=x)
    _check_batch(x, k)
    _check_fits(x.shape[-2:], k.shape[-2:])
    padded = _padded_shape(x.shape[-2:], k.shape[-2:], boundary)
    out = _apply(x, _otf(k, padded), padded, adjoint=adjoint)
    return out[0, 0] if was2d else out


def _blur_reflect(images, psf) -> torch.Tensor:
    from piddpm.padding import reflect_pad

    x, was2d = _as_images(images)
    k = _as_psf(psf, like=x)
    ph, pw = k.shape[-2] // 2, k.shape[-1] // 2
    h, w = x.shape[-2:]
    out = blur(reflect_pad(x, ph, pw), k, boundary="zero")[..., ph : ph + h, pw : pw + w]
    return out[0, 0] if was2d else out


def blur_adjoint(images: torch.Tensor, psf, boundary: Boundary = "zero") -> torch.Tensor:
    """Exact adjoint ``A^T`` of :func:`blur` (correlation with the PSF, same boundary).

    ``<A x, y> = <x, A^T y>`` holds to floating-point precision for both boundaries, any
    PSF size (odd or even) and non-square images. Arguments and shapes as :func:`blur`.
    """
    return _fft_operator(images, psf, boundary, adjoint=True)


class BlurOperator:
    """The blur operator ``A`` for a fixed PSF and image size, with its OTF cached.

    Use it where ``A`` is applied many times (Richardson-Lucy, guided samplers)::

        op = BlurOperator(psf, image_shape=(H, W), boundary="periodic")
        y = op(x)          # A x
        z = op.T(y)        # A^T y (also op.adjoint(y))

    Parameters
    ----------
    psf : Tensor or array, shape (B, 1, kh, kw), (1, 1, kh, kw) or (kh, kw)
        As for :func:`blur`. It is validated once, here.
    image_shape : (int, int)
        ``(H, W)`` of the images the operator acts on.
    boundary : {"zero", "periodic"}
        Boundary model, as for :func:`blur`.
    dtype, device : optional
        Where to build the OTF (default: the PSF's floating dtype and device). Inputs of
        another dtype/device get a converted copy of the OTF, cached as well.
    """

    def __init__(
        self,
        psf,
        image_shape: tuple[int, int],
        boundary: Boundary = "zero",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.boundary = _check_boundary(boundary)
        if len(image_shape) != 2:
            raise PiddpmError(f"image_shape must be (H, W), got {image_shape!r}")
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        k = _as_psf(psf)
        if dtype is not None or device is not None:
            k = k.to(dtype=dtype or k.dtype, device=device or k.device)
        _check_fits(self.image_shape, k.shape[-2:])
        self.psf = k
        self.padded_shape = _padded_shape(self.image_shape, k.shape[-2:], boundary)
        self._otf = {(k.dtype, k.device): _otf(k, self.padded_shape)}

    def otf(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The cached real-FFT OTF on the padded grid, shape ``(B|1, 1, Hp, Wp // 2 + 1)``."""
        key = (dtype, torch.device(device))
        if key not in self._otf:
            self._otf[key] = _otf(self.psf.to(dtype=dtype, device=device), self.padded_shape)
        return self._otf[key]

    def _run(self, images: torch.Tensor, adjoint: bool) -> torch.Tensor:
        x, was2d = _as_images(images)
        if tuple(x.shape[-2:]) != self.image_shape:
            raise PiddpmError(
                f"image size {tuple(x.shape[-2:])} does not match the operator's "
                f"image_shape {self.image_shape}"
            )
        _check_batch(x, self.psf)
        out = _apply(x, self.otf(x.dtype, x.device), self.padded_shape, adjoint)
        return out[0, 0] if was2d else out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``A x`` for images of shape ``(B, C, H, W)`` or ``(H, W)``."""
        return self._run(images, adjoint=False)

    forward = __call__

    def adjoint(self, images: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for images of shape ``(B, C, H, W)`` or ``(H, W)``."""
        return self._run(images, adjoint=True)

    @property
    def T(self) -> _AdjointView:  # noqa: N802 (matrix transpose notation)
        """The adjoint operator: ``op.T(y) == op.adjoint(y)``."""
        return _AdjointView(self)

    def __repr__(self) -> str:
        return (
            f"BlurOperator(psf={tuple(self.psf.shape)}, image_shape={self.image_shape}, "
            f"boundary={self.boundary!r})"
        )


class _AdjointView:
    def __init__(self, op: BlurOperator) -> None:
        self._op = op

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._op.adjoint(images)

    @property
    def T(self) -> BlurOperator:  # noqa: N802
        return self._op


# --------------------------------------------------------------------------------------
# pixel binning
# --------------------------------------------------------------------------------------
def bin_pixels(images: torch.Tensor, factor: int, mode: Literal["sum", "mean"] = "sum"):
    """Bin ``factor x factor`` blocks of pixels (a camera with coarser pixels).

    Parameters
    ----------
    images : Tensor, shape (..., H, W)
        ``H`` and ``W`` must be multiples of ``factor``.
    factor : int
        Binning factor (``>= 1``); e.g. the super-resolution factor between a fine
        ground-truth grid and the camera grid.
    mode : {"sum", "mean"}
        ``"sum"`` (default) adds the block, which conserves photons: binning a photon image
        gives the photons a coarser camera pixel would collect. ``"mean"`` averages the
        block (conserves intensity per pixel, e.g. for normalised images).

    Returns
    -------
    Tensor, shape (..., H // factor, W // factor)
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise PiddpmError(f"binning factor must be an integer >= 1, got {factor!r}")
    if mode not in ("sum", "mean"):
        raise PiddpmError(f"binning mode must be 'sum' or 'mean', got {mode!r}")
    if images.ndim < 2:
        raise PiddpmError(
            f"bin_pixels needs images of shape (..., H, W), got {tuple(images.shape)}"
        )
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise PiddpmError(
            f"image size {h} x {w} is not a multiple of the binning factor {factor}; "
            "crop the image first"
        )
    if factor == 1:
        return images
    x = images.reshape(images.shape[:-2] + (h // factor, factor, w // factor, factor))
    x = x.sum(dim=(-3, -1))
    return x / (factor * factor) if mode == "mean" else x


# --------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------
def _per_sample(value, name: str, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A float or (B,) tensor -> (B|1, 1, 1, 1) tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.shape[0] not in (1, batch):
        raise PiddpmError(
            f"{name} must be a number or a 1-D tensor of length B={batch}, "
            f"got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise PiddpmError(f"{name} must be finite, got {value!r}")
    return t.reshape(-1, 1, 1, 1)


def _make_generator(generator, device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        g = torch.Generator(device=device)
        g.manual_seed(generator)
        return g
    raise PiddpmError(
        f"generator must be a torch.Generator, an int seed or None, got {generator!r}"
    )


def add_noise(
    clean: torch.Tensor,
    *,
    photons,
    background=0.0,
    read_noise=0.0,
    gain=1.0,
    offset=0.0,
    bit_depth: int | None = None,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Simulate camera noise on a noiseless (blurred) image.

    ``counts = Poisson(photons * clean / max(clean) + background) + Normal(0, read_noise^2)``
    then ``observed = gain * counts + offset``; with ``bit_depth`` the result is rounded
    and clipped to ``[0, 2**bit_depth - 1]`` (an ADC).

    Parameters
    ----------
    clean : Tensor, shape (B, C, H, W) or (H, W)
        Noiseless image in any linear unit, ``>= 0`` (tiny negative FFT round-off is
        clipped to 0). ``max`` is taken per sample over ``(C, H, W)``; an all-zero sample
        receives background only.
    photons : float or Tensor (B,)
        Expected number of signal photons (photo-electrons) at the brightest pixel of
        ``clean``, per sample. ``> 0``.
    background : float or Tensor (B,)
        Expected background photons per pixel, ``>= 0`` (out-of-focus light, autofluorescence).
    read_noise : float or Tensor (B,)
        Read-noise standard deviation in electrons rms, ``>= 0``.
    gain : float or Tensor (B,)
        Camera conversion gain in ADU per electron, ``> 0``.
    offset : float or Tensor (B,)
        Camera offset (baseline) in ADU.
    bit_depth : int, optional
        Quantise: round to integers and clip to ``[0, 2**bit_depth - 1]`` ADU. ``None``
        (default) keeps real values, which may be negative from read noise.
    generator : torch.Generator or int, optional
        Random source (an int is used as a seed). The same generator state gives the same
        result. It must live on ``clean``'s device.

    Returns
    -------
    Tensor, same shape as ``clean``
        The observation in ADU (which equals photo-electrons when ``gain=1, offset=0``).
    """
    x, was2d = _as_images(clean, "clean")
    b = x.shape[0]
    photons_t = _per_sample(photons, "photons", b, x)
    background_t = _per_sample(background, "background", b, x)
    read_t = _per_sample(read_noise, "read_noise", b, x)
    gain_t = _per_sample(gain, "gain", b, x)
    offset_t = _per_sample(offset, "offset", b, x)
    if bool((photons_t <= 0).any()):
        raise PiddpmError(
            f"photons must be > 0 (expected photons at the brightest pixel), got {photons!r}"
        )
    if bool((background_t < 0).any()):
        raise PiddpmError(f"background must be >= 0 photons per pixel, got {background!r}")
    if bool((read_t < 0).any()):
        raise PiddpmError(f"read_noise must be >= 0 electrons rms, got {read_noise!r}")
    if bool((gain_t <= 0).any()):
        raise PiddpmError(f"gain must be > 0 ADU per electron, got {gain!r}")
    if bit_depth is not None and (
        isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= 32
    ):
        raise PiddpmError(f"bit_depth must be an integer in 1..32 or None, got {bit_depth!r}")
    gen = _make_generator(generator, x.device)

    with torch.no_grad():
        peak = x.detach().amax(dim=(1, 2, 3), keepdim=True)
        if bool((x.detach().amin(dim=(1, 2, 3), keepdim=True) < -1e-4 * peak.abs()).any()):
            raise PiddpmError(
                "clean image has negative values; expected a non-negative intensity image"
            )
        scale = torch.where(peak > 0, photons_t / peak.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        rate = (x * scale).clamp_min(0) + background_t
        counts = torch.poisson(rate, generator=gen)
        if bool((read_t > 0).any()):
            counts = counts + read_t * torch.randn(
                counts.shape, generator=gen, dtype=x.dtype, device=x.device
            )
        out = gain_t * counts + offset_t
        if bit_depth is not None:
            out = out.round().clamp_(0, 2.0**bit_depth - 1)
    return out[0, 0] if was2d else out


def acquire(
    gt: torch.Tensor,
    psf,
    *,
    photons,
    background=0.0,
    read_noise=0.0,
    gain=1.0,
    offset=0.0,
    bit_depth: int | None = None,
    boundary: Boundary = "zero",
    binning: int = 1,
    bin_mode: Literal["sum", "mean"] = "sum",
    generator: torch.Generator | int | None = None,
    photons_per: Literal["sample", "batch"] = "sample",
    nonnegative: bool = False,
) -> dict[str, torch.Tensor]:
    """Image a ground truth through the microscope and camera model.

    The one acquisition chain of piddpm: the training data, the benchmark's synthetic
    suite, ``piddpm acquire`` and the demo all image their ground truths with it.

    Parameters
    ----------
    gt : Tensor, shape (B, C, H, W) or (H, W)
        Ground-truth fluorophore density, any linear unit, ``>= 0``.
    psf : Tensor or array, shape (B, 1, kh, kw), (1, 1, kh, kw) or (kh, kw)
        PSF on the ground-truth grid (see :func:`blur`).
    photons, background, read_noise, gain, offset, bit_depth, generator
        Camera model, as for :func:`add_noise` (photons and background in photo-electrons,
        read noise in electrons rms, gain in ADU/e-, offset in ADU).
    boundary : {"zero", "periodic"}
        Boundary model of the blur.
    binning : int
        Camera pixel = ``binning x binning`` ground-truth pixels (summed, or averaged with
        ``bin_mode="mean"``); the output is ``binning`` times smaller.
    photons_per : {"sample", "batch"}
        ``photons`` is the expected count at the brightest pixel of each sample, or of the
        whole batch (the planes of a stack then keep their relative brightness; an all-zero
        plane gets ``photons`` as its scale).
    nonnegative : bool
        Clip the blurred image at 0 first (removes FFT round-off below zero).

    Returns
    -------
    dict
        ``observed``: noisy camera image in ADU (photo-electrons when gain 1, offset 0),
        shape ``(B, C, H // binning, W // binning)`` (or 2D for a 2D ``gt``);
        ``observed_clean``: its expectation without noise or quantisation,
        ``gain * (photons * blurred / max(blurred) + background) + offset`` (ADU);
        ``blurred``: ``bin(A gt)`` in the units of ``gt``;
        ``scale``: photons per unit of ``blurred``, shape ``(B,)``.
    """
    blurred = bin_pixels(blur(gt, psf, boundary=boundary), binning, bin_mode)
    if nonnegative:
        blurred = blurred.clamp_min(0.0)
    x, was2d = _as_images(blurred, "blurred")
    b = x.shape[0]
    if photons_per == "batch":
        peaks = x.amax(dim=(1, 2, 3))
        top = float(peaks.max())
        rel = photons * peaks / top if top > 0 else torch.zeros_like(peaks)
        photons = torch.where(rel > 0, rel, torch.full_like(rel, float(photons)))
    elif photons_per != "sample":
        raise PiddpmError(f"photons_per must be 'sample' or 'batch', got {photons_per!r}")
    observed = add_noise(
        x,
        photons=photons,
        background=background,
        read_noise=read_noise,
        gain=gain,
        offset=offset,
        bit_depth=bit_depth,
        generator=generator,
    )
    peak = x.detach().amax(dim=(1, 2, 3), keepdim=True)
    photons_t = _per_sample(photons, "photons", b, x)
    scale = torch.where(peak > 0, photons_t / peak.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    clean = _per_sample(gain, "gain", b, x) * (
        (x * scale).clamp_min(0) + _per_sample(background, "background", b, x)
    ) + _per_sample(offset, "offset", b, x)
    scale = scale.reshape(-1).expand(b)
    if was2d:
        return {
            "observed": observed[0, 0],
            "observed_clean": clean[0, 0],
            "blurred": x[0, 0],
            "scale": scale,
        }
    return {"observed": observed, "observed_clean": clean, "blurred": x, "scale": scale}
