"""The fast Richardson-Lucy engine shared by 2-D and 3-D RL: an n-D FFT blur operator with
its OTF and conjugate cached, and the in-place iteration.

The operator convolves the last ``d`` axes (``d = 2`` or ``3``) of a batched float tensor
with a PSF whose centre is the voxel ``k // 2`` on each axis. It uses real FFTs
(``torch.fft.rfftn``) on a grid padded to fast FFT lengths, and two geometries:

``"same"`` (the ``boundary="zero"`` model of :func:`piddpm.acquisition.blur`)
    object and data on the same ``n``-voxel grid, the object extended by zeros. The
    circular convolution on a grid of ``P >= n + k // 2`` voxels is the exact linear one
    (no wrap-around reaches the kept voxels), a shorter grid than the ``n + k - 1`` of a
    full linear convolution (528 instead of 576 for 512 + 31 - 1: 16 % fewer FFT points in 2-D).
``"valid"`` (the boundary method of Bertero and Boccacci 2005)
    the object lives on an extended grid of ``n + k - 1`` voxels (``k // 2`` beyond each
    data border, ``k`` odd) and the data are the central ``n`` voxels of its blur, so
    light from outside the field of view has somewhere to come from: no ringing and no
    dark rim at the borders (in z: the top and bottom planes). ``P >= n + k - 1``.
``"periodic"``
    circular convolution on the ``n``-voxel torus.

On CPU the ``"same"`` and ``"valid"`` operators run as one *complex* FFT of two real slabs
(:class:`PairLayout`): the object is cut in two halves along the second-to-last axis, each
half with the rows within the PSF's reach of it goes into the real or the imaginary part of
one complex array, and since the PSF is real one complex FFT, product and inverse give both
halves' convolutions exactly. MKL's and pocketfft's complex-to-real inverse is
2-3x slower than the real-to-complex forward at these sizes, while the complex transform of
the packed pair costs about one forward: RL's four transforms per iteration become four
complex transforms of half the rows (measured in docs/benchmarks/rl.md).

OTFs (and their conjugates, and the EM sensitivity ``A^T 1``) are cached per PSF content,
shape, geometry, dtype and device in a small LRU (at most :data:`CACHE_ENTRIES` entries,
none above :data:`CACHE_MAX_ELEMENTS` OTF elements), so repeated calls on the same PSF and
shape (``rl_iterations`` runs RL one iteration at a time) do not recompute them.

Reference: M. Bertero, P. Boccacci, Astron. Astrophys. 437, 369 (2005) (boundary effects
in Richardson-Lucy).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Literal

import torch

__all__ = [
    "CACHE_ENTRIES",
    "CACHE_MAX_ELEMENTS",
    "FFTBlur",
    "PairLayout",
    "broadcast_shapes",
    "fft_grid",
    "good_fft_size",
    "rl_fixed_iterations",
]

Geometry = Literal["same", "valid", "periodic"]

#: LRU size of the OTF cache.
CACHE_ENTRIES = 8
#: OTFs larger than this many complex elements are not cached (3-D volumes; an entry holds
#: the OTF and its conjugate: at most 64 MB in complex64, 8 entries at most 512 MB).
CACHE_MAX_ELEMENTS = 1 << 22

_CACHE: OrderedDict = OrderedDict()


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of plain integer shapes (``torch.broadcast_shapes`` without its first
    call's import of torch's symbolic-shape machinery, ~0.8 s per process on this CPU).

    Raises
    ------
    ValueError
        Shapes that do not broadcast.
    """
    import numpy as np

    return tuple(int(n) for n in np.broadcast_shapes(*(tuple(s) for s in shapes)))


def _psf_key(psf: torch.Tensor) -> str:
    data = psf.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def good_fft_size(n: int, device: torch.device | str = "cpu") -> int:
    """Smallest length ``>= n`` that the FFT library does fast: 11-smooth on CPU (MKL and
    pocketfft have radix-7 and radix-11 passes: 527 -> 528, not 540), 7-smooth on CUDA.

    Parameters
    ----------
    n : int
        Minimum length (``>= 1``).
    device : torch.device or str
        Where the FFT runs.

    Returns
    -------
    int
        The length.
    """
    primes = (2, 3, 5, 7) if torch.device(device).type == "cuda" else (2, 3, 5, 7, 11)
    m = max(int(n), 1)
    while True:
        k = m
        for p in primes:
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_grid(
    shape: tuple[int, ...],
    psf_shape: tuple[int, ...],
    geometry: Geometry,
    device: torch.device | str = "cpu",
):
    """FFT grid (voxels per axis) of an operator, and the object grid it acts on.

    Returns
    -------
    (tuple of int, tuple of int)
        The padded FFT lengths and the object's shape (``n + k - 1`` per axis for
        ``"valid"``, else ``n``).
    """
    if geometry == "periodic":
        return tuple(shape), tuple(shape)
    if geometry == "valid":
        obj = tuple(n + k - 1 for n, k in zip(shape, psf_shape, strict=True))
        return tuple(good_fft_size(m, device) for m in obj), obj
    grid = tuple(good_fft_size(n + k // 2, device) for n, k in zip(shape, psf_shape, strict=True))
    return grid, tuple(shape)


def _make_otf(psf: torch.Tensor, grid: tuple[int, ...], geometry: Geometry) -> torch.Tensor:
    """``rfftn`` of the PSF wrapped onto ``grid``, its centre moved to the origin (``same``,
    ``periodic``) or to ``-(k - 1)`` (``valid``: data voxel ``i`` is object voxel
    ``i + k // 2``)."""
    d = len(grid)
    ks = psf.shape[-d:]
    full = psf.new_zeros(psf.shape[:-d] + tuple(grid))
    full[(...,) + tuple(slice(0, k) for k in ks)] = psf
    shift = tuple(-(k - 1) if geometry == "valid" else -(k // 2) for k in ks)
    full = torch.roll(full, shifts=shift, dims=tuple(range(-d, 0)))
    return torch.fft.rfftn(full, dim=tuple(range(-d, 0)))


#: Use the paired (two-slab complex FFT) layout on CPU when the second-to-last axis has at
#: least this many voxels (and at least twice the PSF's extent there); below it the halo
#: overhead outweighs the saving.
PACK_MIN_ROWS = 32


class FFTBlur:
    """Blur operator ``A`` (and ``A^T``) on the last ``d`` axes, OTF and conjugate cached.

    Parameters
    ----------
    psf : Tensor, shape (..., k_1, ..., k_d)
        PSF, validated by the caller (finite, >= 0); leading axes broadcast against the
        images' leading axes (``(B|1, C|1, kh, kw)`` in 2-D, ``(kz, ky, kx)`` in 3-D).
    shape : tuple of int
        The data's shape on the last ``d`` axes.
    geometry : {"same", "valid", "periodic"}
        See the module docstring. ``"valid"`` needs odd PSF sides.
    dtype, device : optional
        Where the OTF lives (default: the PSF's).
    pack : bool, optional
        Use the two-slab complex FFT (:class:`PairLayout`) for ``"same"`` and ``"valid"``.
        Default: on CPU when the second-to-last axis has at least :data:`PACK_MIN_ROWS`
        voxels and twice the PSF's extent (on CUDA the real transforms are fast and batched).
    """

    def __init__(self, psf: torch.Tensor, shape, geometry: Geometry = "same", *, dtype=None,
                 device=None, pack: bool | None = None) -> None:  # fmt: skip
        self.d = len(shape)
        self.psf = psf.to(dtype=dtype or psf.dtype, device=device or psf.device)
        self.shape = tuple(int(n) for n in shape)
        self.psf_shape = tuple(int(k) for k in self.psf.shape[-self.d :])
        self.geometry = geometry
        self.grid, self.object_shape = fft_grid(
            self.shape, self.psf_shape, geometry, self.psf.device
        )
        self.dims = tuple(range(-self.d, 0))
        key = None
        n_otf = self.psf[..., 0, 0].numel() * self.grid[-1] // 2
        for g in self.grid[:-1]:
            n_otf *= g
        if n_otf <= CACHE_MAX_ELEMENTS:
            key = (_psf_key(self.psf), tuple(self.psf.shape), self.grid, self.shape, geometry,
                   self.psf.dtype, str(self.psf.device))  # fmt: skip
        if pack is None:
            pack = (
                self.psf.device.type == "cpu"
                and geometry != "periodic"
                and self.d >= 2
                and self.shape[-2] >= max(PACK_MIN_ROWS, 2 * self.psf_shape[-2])
            )
        if pack and (geometry == "periodic" or self.object_shape[-2] < 2 * self.psf_shape[-2]):
            raise ValueError(
                "the paired layout needs the 'same' or 'valid' geometry and at least twice "
                "the PSF's extent on the second-to-last axis"
            )
        self.packed = bool(pack)
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            self._entry = _CACHE[key]
        else:
            self._entry = {"sens": {}}
            if key is not None:
                _CACHE[key] = self._entry
                while len(_CACHE) > CACHE_ENTRIES:
                    _CACHE.popitem(last=False)
        self._otf_row = None

    def pair_layout(self) -> PairLayout:
        """The :class:`PairLayout` of this operator (cached with its OTF)."""
        if "pairs" not in self._entry:
            self._entry["pairs"] = PairLayout(self)
        lay = self._entry["pairs"]
        if self._otf_row is not None:
            import copy

            lay = copy.copy(lay)
            lay.otf = _lead_row(lay.otf, self._otf_row, self.d)
            lay.otf_conj = _lead_row(lay.otf_conj, self._otf_row, self.d)
        return lay

    def _otfs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The real-FFT OTF and its conjugate (made on first use: the packed path does not
        need them)."""
        if "otf" not in self._entry:
            otf = _make_otf(self.psf, self.grid, self.geometry)
            self._entry["otf"], self._entry["otf_conj"] = otf, otf.conj().resolve_conj()
        otf, otf_conj = self._entry["otf"], self._entry["otf_conj"]
        if self._otf_row is not None:
            otf = _lead_row(otf, self._otf_row, self.d)
            otf_conj = _lead_row(otf_conj, self._otf_row, self.d)
        return otf, otf_conj

    @property
    def otf(self) -> torch.Tensor:
        """``rfftn`` of the PSF on :attr:`grid` (see :func:`_make_otf`)."""
        return self._otfs()[0]

    @property
    def otf_conj(self) -> torch.Tensor:
        """The conjugate of :attr:`otf`."""
        return self._otfs()[1]

    def _crop(self, x: torch.Tensor, shape) -> torch.Tensor:
        return x[(...,) + tuple(slice(0, n) for n in shape)]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``A u``: ``u`` on the object grid, result on the data grid (a view of a new
        tensor, safe to modify in place)."""
        if self.packed:
            return self.pair_layout().apply(u, "forward")
        spec = torch.fft.rfftn(u, s=self.grid, dim=self.dims)
        spec.mul_(self.otf)
        return self._crop(torch.fft.irfftn(spec, s=self.grid, dim=self.dims), self.shape)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``A^T r``: ``r`` on the data grid, result on the object grid (a view)."""
        if self.packed:
            return self.pair_layout().apply(r, "adjoint")
        spec = torch.fft.rfftn(r, s=self.grid, dim=self.dims)
        spec.mul_(self.otf_conj)
        return self._crop(torch.fft.irfftn(spec, s=self.grid, dim=self.dims), self.object_shape)

    def inverse_sensitivity(self, lead_shape: tuple[int, ...], dtype, device,
                            eps: float) -> torch.Tensor:  # fmt: skip
        """``1 / max(A^T 1, eps)`` on the object grid (cached like :meth:`sensitivity`)."""
        key = ("inverse", tuple(lead_shape), dtype, str(device), float(eps))
        inv = self._entry["sens"].get(key)
        if inv is None:
            inv = self.sensitivity(lead_shape, dtype, device).clamp_min(eps).reciprocal()
            self._entry["sens"][key] = inv
        return inv

    def sensitivity(self, lead_shape: tuple[int, ...], dtype, device) -> torch.Tensor:
        """``A^T 1`` on the object grid (cached), leading axes ``lead_shape`` (or 1s)."""
        key = (tuple(lead_shape), dtype, str(device))
        sens = self._entry["sens"].get(key)
        if sens is None:
            lead = broadcast_shapes(tuple(lead_shape), tuple(self.psf.shape[: -self.d]))
            sens = self._box_sums(dtype, device).expand(lead + self.object_shape).contiguous()
            self._entry["sens"][key] = sens
        return sens

    def _box_sums(self, dtype, device) -> torch.Tensor:
        """``A^T 1`` without an FFT of the volume: each object voxel's sensitivity is the sum
        of the PSF voxels whose data voxel exists, and whether it exists is decided axis by
        axis, so ``A^T 1 = sum_j psf[j] prod_a M_a[j_a, x_a]`` with the 0/1 masks of
        :func:`_axis_mask`. ``d`` small matrix products instead of two transforms of the
        padded volume (1.4 s for a 64 x 512 x 512 stack with a 31^3 PSF on one CPU thread);
        equal to ``adjoint(ones)`` to round-off (tested)."""
        out = self.psf.to(dtype=dtype, device=device)
        for a in range(self.d):
            mask = _axis_mask(self.shape[a], self.psf_shape[a], self.geometry)
            pos = out.ndim - self.d + a
            out = (out.movedim(pos, -1) @ mask.to(dtype=dtype, device=device)).movedim(-1, pos)
        return out


def _axis_mask(n: int, k: int, geometry: Geometry) -> torch.Tensor:
    """``M[j, x] = 1`` where PSF index ``j`` carries object voxel ``x`` to an existing data
    voxel on one axis of ``n`` data voxels: data voxel ``x + j - k // 2`` (``"same"``) or
    ``x + j - (k - 1)`` (``"valid"``, object ``n + k - 1`` long); all ones when periodic."""
    if geometry == "periodic":
        return torch.ones(k, n, dtype=torch.float64)
    obj = n + k - 1 if geometry == "valid" else n
    shift = k - 1 if geometry == "valid" else k // 2
    i = torch.arange(obj)[None, :] + torch.arange(k)[:, None] - shift
    return ((i >= 0) & (i < n)).to(torch.float64)


def rl_fixed_iterations(
    y: torch.Tensor,
    u: torch.Tensor,
    op: FFTBlur,
    num_iter: int,
    *,
    background: torch.Tensor | None = None,
    inv_sens: torch.Tensor | None = None,
    eps: float = 1e-12,
    monitor=None,
) -> tuple[torch.Tensor, int]:
    """Run ``num_iter`` Richardson-Lucy iterations in place on ``u``.

    ``u <- u * A^T(y / max(A u + b, eps)) * inv_sens``: four real FFTs per iteration,
    float32 (or float64) throughout, in-place products, any batch of leading axes.

    Parameters
    ----------
    y : Tensor
        Data (``>= 0``) on the operator's data grid, with leading axes.
    u : Tensor
        Contiguous estimate on the object grid (modified in place).
    op : FFTBlur
        The blur operator.
    num_iter : int
        Iterations (an upper bound with ``monitor``).
    background : Tensor, optional
        ``b``, broadcastable to ``y``.
    inv_sens : Tensor, optional
        ``1 / A^T 1`` (or 0 where the sensitivity vanishes), broadcastable to ``u``.
    eps : float
        Floor of the model ``A u + b`` in the division.
    monitor : callable, optional
        ``monitor(k, model) -> bool`` is called with the model ``A u_k + b`` of the estimate
        after ``k`` iterations (before clamping); returning True stops before the update.

    Returns
    -------
    (Tensor, int)
        ``u`` and the number of iterations done.
    """
    if u.device.type == "cpu" and u.ndim > op.d and u.shape[0] > 1 and monitor is None:
        # on CPU one sample at a time keeps the buffers in cache (measured faster than batched)
        for i in range(u.shape[0]):
            rl_fixed_iterations(
                _row(y, i), u[i], _op_row(op, i), num_iter,
                background=_row(background, i), inv_sens=_row(inv_sens, i), eps=eps,
            )  # fmt: skip
        return u, num_iter
    if op.packed:
        return _rl_paired(y, u, op, num_iter, background, inv_sens, eps, monitor)
    grid, dims = op.grid, op.dims
    lead = tuple(u.shape[: u.ndim - op.d])
    obj = (...,) + tuple(slice(0, n) for n in op.object_shape)
    dat = (...,) + tuple(slice(0, n) for n in op.shape)
    # the estimate and the ratio live inside zero-padded FFT grids: no padding copies
    ubuf = u.new_zeros(lead + tuple(grid))
    ubuf[obj] = u
    rbuf = u.new_zeros(broadcast_shapes(lead, tuple(y.shape[: y.ndim - op.d])) + grid)
    uv, rv = ubuf[obj], rbuf[dat]
    done = num_iter
    for k in range(num_iter + (monitor is not None)):
        spec = torch.fft.rfftn(ubuf, dim=dims)
        spec.mul_(op.otf)
        model = torch.fft.irfftn(spec, s=grid, dim=dims)[dat]
        del spec
        if background is not None:
            model.add_(background)
        if monitor is not None and monitor(k, model):
            done = k
            break
        if k == num_iter:
            break
        torch.div(y, model.clamp_min_(eps), out=rv)
        del model
        spec = torch.fft.rfftn(rbuf, dim=dims)
        spec.mul_(op.otf_conj)
        uv.mul_(torch.fft.irfftn(spec, s=grid, dim=dims)[obj])
        del spec
        if inv_sens is not None:
            uv.mul_(inv_sens)
    u.copy_(uv)
    return u, done


class PairLayout:
    """The iteration layout of the CPU RL loop: the object's rows as pairs.

    Along the second-to-last axis the object's ``N`` rows are cut into a top half
    (rows ``0 .. M-1``, ``M = ceil(N / 2)``) kept in the real part of a complex array and a
    bottom half (rows ``M .. N-1``) kept in the imaginary part, *at the same grid rows*
    ``0 .. M-1``. Each half's neighbours within the PSF's reach (``h = k // 2`` rows) sit
    beside it: the top half's next rows at grid rows ``M .. M+h-1`` of the real part, the
    bottom half's previous rows at ``P-h .. P-1`` of the imaginary part (wrapping around the
    circular grid of ``P >= M + 2h`` rows, where the real part is zero). One complex FFT,
    product with the real PSF's OTF, and inverse then blur both halves exactly, and every
    element-wise step of RL (the ratio, the update) is one contiguous pass over the pairs,
    with only the ``2h`` halo rows copied per transform.

    On the split axis the convolution is centred on the object grid; the ``"valid"``
    geometry is the same operator with the data at object rows ``off = k // 2`` onwards
    (data row ``i`` is the centred blur at object row ``i + k // 2``), and zero data
    elsewhere make the ratio zero there. The other axes keep the operator's own grid.
    """

    def __init__(self, op: FFTBlur) -> None:
        d, ax = op.d, op.d - 2
        self.d, self.ax = d, ax
        k = op.psf_shape[ax]
        self.h = k // 2
        self.n_obj, self.n_dat = op.object_shape[ax], op.shape[ax]
        self.off = k // 2 if op.geometry == "valid" else 0
        self.M = (self.n_obj + 1) // 2
        grid = list(op.grid)
        grid[ax] = good_fft_size(self.M + 2 * self.h, op.psf.device)
        self.grid = tuple(grid)
        self.dims = tuple(range(-d, 0))
        ks = op.psf_shape
        psf = op.psf
        full = psf.new_zeros(psf.shape[:-d] + self.grid)
        full[(...,) + tuple(slice(0, kk) for kk in ks)] = psf
        shifts = [-(kk - 1) if op.geometry == "valid" else -(kk // 2) for kk in ks]
        shifts[ax] = -(ks[ax] // 2)
        full = torch.roll(full, shifts=tuple(shifts), dims=self.dims)
        # unnormalised forward and inverse transforms: the 1 / N goes into the OTF
        otf = torch.fft.fftn(full, dim=self.dims)
        otf.div_(math.prod(self.grid))
        self.otf, self.otf_conj = otf, otf.conj().resolve_conj()
        self.extent = {"object": op.object_shape, "data": op.shape}

    def _own(self, kind: str) -> tuple:
        idx = [slice(0, n) for n in self.extent[kind]]
        idx[self.ax] = slice(0, self.M)
        return (...,) + tuple(idx)

    def pair_view(self, z: torch.Tensor, kind: str) -> torch.Tensor:
        """The float view ``(..., M, ..., 2)`` of the pairs inside a complex grid array."""
        return torch.view_as_real(z[self._own(kind)])

    def _rows(self, x: torch.Tensor, kind: str):
        """For each part, (pair rows, source rows) of ``x`` (``kind`` grid) on that part."""
        offset = self.off if kind == "data" else 0
        length = x.shape[x.ndim - self.d + self.ax]
        out = []
        for part in (0, 1):
            lo = max(part * self.M, offset)
            hi = min(part * self.M + self.M, offset + length)
            out.append(
                (slice(lo - part * self.M, hi - part * self.M), slice(lo - offset, hi - offset))
                if hi > lo
                else None
            )
        return out

    def _at(self, rows: slice, ndim: int, extent) -> tuple:
        idx = [slice(None)] * (ndim - self.d) + [slice(0, n) for n in extent]
        idx[ndim - self.d + self.ax] = rows
        return tuple(idx)

    def to_pairs(self, x: torch.Tensor, kind: str, out: torch.Tensor | None = None):
        """``x`` (leading axes, then the ``kind`` grid: ``"object"`` or ``"data"``) as a
        float array of pairs, zero where the object has no such row: a new array, or
        written into ``out`` (a zeroed pair view of a grid array)."""
        if out is None:
            shape = list(x.shape)
            shape[x.ndim - self.d + self.ax] = self.M
            out = x.new_zeros(tuple(shape) + (2,))
        for part, rows in enumerate(self._rows(x, kind)):
            if rows is not None:
                out[self._at(rows[0], x.ndim, x.shape[-self.d :]) + (part,)] = x[
                    self._at(rows[1], x.ndim, x.shape[-self.d :])
                ]
        return out

    def from_pairs(self, pairs: torch.Tensor, out: torch.Tensor, kind: str) -> torch.Tensor:
        """Write pairs back into ``out`` (leading axes, then the ``kind`` grid)."""
        for part, rows in enumerate(self._rows(out, kind)):
            if rows is not None:
                out[self._at(rows[1], out.ndim, out.shape[-self.d :])] = pairs[
                    self._at(rows[0], out.ndim, out.shape[-self.d :]) + (part,)
                ]
        return out

    def new_grid(self, lead: tuple[int, ...], dtype) -> torch.Tensor:
        """A zero complex array of the layout's grid (``dtype``: the real dtype)."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(lead + self.grid, dtype=cdtype)

    def blur(self, z: torch.Tensor, direction: str) -> torch.Tensor:
        """The pairs in ``z`` (halos synced) blurred (``"forward"``: ``A``) or correlated
        (``"adjoint"``: ``A^T``) with the PSF: a new complex grid array."""
        spec = torch.fft.fftn(z, dim=self.dims)
        spec.mul_(self.otf if direction == "forward" else self.otf_conj)
        return torch.fft.ifftn(spec, dim=self.dims, norm="forward")

    def apply(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``A x`` (``"forward"``: object grid to data grid) or ``A^T x`` (``"adjoint"``:
        data grid to object grid) of a real array with leading axes: a new array."""
        src, dst = ("object", "data") if direction == "forward" else ("data", "object")
        lead = tuple(x.shape[: x.ndim - self.d])
        z = self.new_grid(lead, x.dtype)
        self.pair_view(z, src).copy_(self.to_pairs(x, src))
        self.sync_halos(z, src)
        out = x.new_empty(lead + tuple(self.extent[dst]))
        return self.from_pairs(self.pair_view(self.blur(z, direction), dst), out, dst)

    def halo_views(self, z: torch.Tensor, kind: str) -> list:
        """``(destination, source)`` views of ``z``'s halo copies (see :meth:`sync_halos`);
        a loop over one array makes them once."""
        h, M, P = self.h, self.M, self.grid[self.ax]
        zr = torch.view_as_real(z)
        ext, nd = self.extent[kind], zr.ndim - 1
        views = []
        # object rows M .. M+h-1 (the bottom half's first rows) below the top half
        n_next = min(h, self.n_obj - M)
        if n_next > 0:
            views.append((zr[self._at(slice(M, M + n_next), nd, ext) + (0,)],
                          zr[self._at(slice(0, n_next), nd, ext) + (1,)]))  # fmt: skip
        # object rows M-h .. M-1 (the top half's last rows) above the bottom half
        n_prev = min(h, M)
        if n_prev > 0:
            views.append((zr[self._at(slice(P - n_prev, P), nd, ext) + (1,)],
                          zr[self._at(slice(M - n_prev, M), nd, ext) + (0,)]))  # fmt: skip
        return views

    def sync_halos(self, z: torch.Tensor, kind: str, views: list | None = None) -> None:
        """Copy each half's neighbour rows (within the PSF's reach) into its halo."""
        for dst, src in views if views is not None else self.halo_views(z, kind):
            dst.copy_(src)


def _rl_paired(y, u, op: FFTBlur, num_iter, background, inv_sens, eps, monitor):
    """:func:`rl_fixed_iterations` in the :class:`PairLayout` (CPU)."""
    lay = op.pair_layout()
    d = op.d
    lead_u = tuple(u.shape[: u.ndim - d])
    lead_y = broadcast_shapes(lead_u, tuple(y.shape[: y.ndim - d]))
    zf, za = lay.new_grid(lead_u, u.dtype), lay.new_grid(lead_y, u.dtype)
    est, ratio = lay.pair_view(zf, "object"), lay.pair_view(za, "data")
    lay.to_pairs(u, "object", out=est)
    data = lay.to_pairs(y, "data")
    # the weight is also zero on the padding row of an odd N, which keeps that row at 0
    weight = lay.to_pairs(torch.ones_like(u) if inv_sens is None else inv_sens.expand_as(u),
                          "object")  # fmt: skip
    bg = None
    if background is not None:
        b = torch.as_tensor(background, dtype=u.dtype)
        if b.ndim >= d and any(n > 1 for n in b.shape[-d:]):
            bg = lay.to_pairs(b.expand(lead_y + op.shape).contiguous(), "data")
        else:
            bg = b[..., None] if b.ndim else b
    halo_f, halo_a = lay.halo_views(zf, "object"), lay.halo_views(za, "data")
    lay.sync_halos(zf, "object", halo_f)
    model_out = u.new_empty(lead_y + op.shape) if monitor is not None else None
    done = num_iter
    for k in range(num_iter + (monitor is not None)):
        blurred = lay.blur(zf, "forward")
        model = lay.pair_view(blurred, "data")
        if bg is not None:
            model.add_(bg)
        if monitor is not None and monitor(k, lay.from_pairs(model, model_out, "data")):
            done = k
            break
        if k == num_iter:
            break
        torch.div(data, model.clamp_min_(eps), out=ratio)
        del model, blurred
        lay.sync_halos(za, "data", halo_a)
        back = lay.blur(za, "adjoint")
        est.mul_(lay.pair_view(back, "object")).mul_(weight)
        del back
        lay.sync_halos(zf, "object", halo_f)
    lay.from_pairs(est, u, "object")
    return u, done


def _row(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
    """Sample ``i`` of a tensor batched (or broadcast) over its first axis."""
    if t is None or t.ndim == 0:
        return t
    return t[i] if t.shape[0] > 1 else t[0]


def _lead_row(otf: torch.Tensor, rows, d: int) -> torch.Tensor:
    """Sample ``rows`` (an index, or a tuple of successive indices into the leading axes)
    of an OTF with leading (batch) axes; leading axes it lacks are shared."""
    for i in rows if isinstance(rows, tuple) else (rows,):
        if otf.ndim > d:
            otf = _row(otf, i)
    return otf


def _op_row(op: FFTBlur, i: int) -> FFTBlur:
    """The operator of sample ``i`` (its OTF row; shares the cache)."""
    import copy

    sub = copy.copy(op)
    sub._otf_row = (op._otf_row or ()) + (i,)
    return sub
