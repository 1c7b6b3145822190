"""Poisson-Gaussian camera noise fit: gain, offset and read noise from the user's own images.

Camera model (the one :func:`piddpm.acquisition.add_noise` simulates)::

    y = gain * (Poisson(lambda) + Normal(0, read_noise_e^2)) + offset     # ADU

so that, pixel by pixel, with ``mu = E[y]``::

    var(y)    = gain * (mu - offset) + gain^2 * read_noise_e^2             # a line in mu
    kappa3(y) = gain^2 * (mu - offset)                                      # third cumulant

The variance line gives the gain (its slope) and ``gain^2 read^2 - gain offset`` (its
intercept); offset and read noise are confounded in it. The third cumulant (Gaussian read
noise has none) separates them, unless the offset is given.

Method (see ``docs/acquisition.md``):

1. **Residuals.** Two 3 x 3 high-pass filters of every pixel: ``pixel - mean of its 8
   neighbours`` (``r8``: its third power sum ``sum c^3 = 0.984`` keeps the skewness, and its
   overlapping windows are nearly independent) and the separable second difference
   ``[1,-2,1] x [1,-2,1] / 6`` (``rc``: it annihilates every quadratic, so smooth structure
   hardly leaks into it). For independent pixel noise of variance ``v`` and third cumulant
   ``k``, ``var(r) = sum c^2 v`` and ``kappa3(r) = sum c^3 k``.
2. **Flat windows, gated and binned independently of the residual.** The 16 pixels of the
   5 x 5 ring around the 3 x 3 window give the local level (their mean bins the window) and
   a flatness test: a quadratic surface fitted to them must have no significant curvature
   and a residual sum of squares consistent with the noise (chi-square, 99 %). A stricter
   test on the 72 pixels of the 9 x 9 square around the 3 x 3 window selects the windows for
   ``r8``. No gate shares a pixel with the 3 x 3 window, so gating and binning do not bias
   the residual's moments.
3. **Moments per bin.** Unbiased central second and third cumulants (k-statistics) of the
   residuals in each bin, and the matching weighted mean of the 3 x 3 pixels (weights
   ``c^2`` or ``c^3``) as the bin's intensity; the noise moments are linear in the intensity,
   so any mixture of levels in a bin is exact. The variance is ``r8``'s where at least 90 %
   of a bin's windows pass the strict gate (background, even areas), else ``rc``'s.
4. **Fits.** Weighted least squares of the variance line (weights ``n_eff / var^2``; bins far
   above the line, leftover structure, dropped); then the offset as the weighted mean of
   ``x - kappa3 / gain^2`` (weights ``n / var^3``) unless it is given; read noise ``=
   (intercept + gain offset) / gain^2``. Standard errors by a delete-one-tile jackknife over
   16 spatial tiles per image.

Saturated or clipped pixels (the dtype maximum, a repeated image maximum, exact zeros in
non-negative data, non-finite values) are excluded with their windows, and bins where more
than 1 % of windows touched one are dropped (their noise is truncated).

On integer data the fitted read noise is the effective one and includes the ADC rounding
noise, ``1 / (12 gain^2)`` electrons^2 (what a simulation needs to reproduce). Rescaled data
(8-bit exports) fit the same model, with ``gain`` in ADU per *effective* electron.

Limits: pixel noise must be independent (raw camera frames, not denoised, interpolated,
compressed or EMCCD data), the images must contain flat areas at two or more intensity
levels (gain), and the read noise is only as precise as the offset: with the offset fitted,
its error in electrons grows with the background level (measured in ``docs/acquisition.md``).
Give ``offset=`` (camera metadata, or a dark frame's mean) when the background is bright.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from piddpm import PiddpmError

__all__ = ["NoiseFit", "estimate_noise", "noise_ranges"]

# ---------------------------------------------------------------------------- constants
#: variance filter: separable second difference, unit sum of squares
_CC = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0]) / 6.0
#: third-cumulant filter: pixel minus the mean of its 8 neighbours
_C8 = np.full((3, 3), -1.0 / 8.0)
_C8[1, 1] = 1.0
_CC2 = float((_CC**2).sum())  # 1
_C83 = float((_C8**3).sum())  # 0.984375
#: pixel weights of each residual's mean intensity (c^2 for the variance, c^3 for kappa3)
_W2 = _CC**2 / _CC2
_W8 = _C8**2 / float((_C8**2).sum())
_W3 = _C8**3 / _C83


def _inflation(c: np.ndarray) -> float:
    """``sum_shift rho(shift)^2``, rho the normalised autocorrelation of the filter ``c``:
    how much overlapping windows inflate the variance of a mean of squared residuals
    (Gaussian noise) over that of independent ones."""
    h, w = c.shape
    total = 0.0
    for dy in range(-h + 1, h):
        for dx in range(-w + 1, w):
            a = c[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            b = c[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            total += float((a * b).sum()) ** 2
    return total / float((c * c).sum()) ** 2


_INFL_C = _inflation(_CC)  # 3.78
_INFL_8 = _inflation(_C8)  # 1.28


class _Surround:
    """A quadratic surface ``(1, dx, dy, dx^2, dx dy, dy^2)`` least-squares fitted to the
    pixels of the ``(2 radius + 1)^2`` square around a window, its centre 3 x 3 left out.

    Computed from box moments (``sum y dx^i dy^j`` over the square minus over the 3 x 3):
    the coefficients are ``G^-1 M`` and the residual sum of squares ``sum y^2 - M' G^-1 M``.
    ``curv_noise`` is the noise, in pixel noise standard deviations, of the 8-neighbour
    structure residual ``0.75 (d + f)`` the fitted surface predicts at the centre.
    """

    def __init__(self, radius: int, chi2_99: float) -> None:
        pts = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if max(abs(dy), abs(dx)) >= 2]  # fmt: skip
        x = np.array([[1, dx, dy, dx * dx, dx * dy, dy * dy] for dy, dx in pts], float)
        self.radius = radius
        self.n = len(pts)
        self.ginv = np.linalg.inv(x.T @ x)
        self.dof = self.n - 6
        self.rss_limit = chi2_99 * self.dof  # chi2_99: the 99 % quantile of chi2(dof) / dof
        row = 0.75 * (self.ginv[3] + self.ginv[5]) @ x.T
        self.curv_noise = float(np.sqrt(row @ row))

    def fit(self, moments: dict[int, tuple[np.ndarray, np.ndarray]]):
        """|predicted 8-neighbour residual| (ADU) and residual sum of squares (ADU^2)."""
        m = moments[self.radius][0] - moments[1][0]
        sq = moments[self.radius][1] - moments[1][1]
        coef = np.einsum("ij,jn->in", self.ginv, m)
        rss = sq - np.einsum("in,in->n", m, coef)
        return np.abs(0.75 * (coef[3] + coef[5])), np.maximum(rss, 0.0), m[0] / self.n


def _box_moments(b: np.ndarray, h: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    """``sum y dx^i dy^j`` over the ``(2h+1)^2`` box around each interior pixel, in the
    order ``(1, dx, dy, dx^2, dx dy, dy^2)``, and ``sum y^2`` (separable 1-D passes)."""
    from scipy.ndimage import correlate1d

    d = np.arange(-h, h + 1, dtype=float)
    one, d2 = np.ones_like(d), d * d

    def pass2(x, wy):
        return correlate1d(x, wy, axis=0, mode="nearest")[e:-e, e:-e].ravel()

    t0, t1, t2 = (correlate1d(b, w, axis=1, mode="nearest") for w in (one, d, d2))
    m = np.stack(
        [pass2(t0, one), pass2(t1, one), pass2(t0, d), pass2(t2, one), pass2(t1, d),
         pass2(t0, d2)]
    )  # fmt: skip
    return m, pass2(correlate1d(b * b, one, axis=1, mode="nearest"), one)


#: the 16-pixel ring of the 5 x 5 square (bins and the gate of rc)
_RING = _Surround(2, 2.3209)
#: the 72 pixels of the 9 x 9 square around the 3 x 3 window (the stricter gate of r8)
_OUTER = _Surround(4, 1.4489)
_CURV_LIMIT = 2.5  # curvature gates, in noise standard deviations
_BORDER = _OUTER.radius

_MIN_SIDE = 16  # smallest image side accepted
_MIN_WINDOWS = 2000  # flat windows needed over all images
_MIN_BIN = 100  # windows per bin
_TARGET_BINS = 32
_MAX_SAMPLE = 1 << 17  # windows in the pilot sample that sets the bins
_BAD_FRACTION = 0.01  # bins with more clipped windows are dropped
_FLAT3_SHARE = (
    0.9  # bins where more windows have a flat 9 x 9 surround use the 8-neighbour variance
)
_OUTLIER = 0.5  # bins whose variance exceeds the line by more (relative) are structured
_MAX_SLOPE_SE = 4.0  # the gain must exceed this many of its standard errors
_TILES = 4  # each image is split into _TILES x _TILES tiles for the jackknife
_MAX_GROUPS = 64
_CACHE_PIXELS = 1 << 21  # window statistics of up to 2 Mpx are kept between the passes
_STRIP_PIXELS = 1 << 20  # larger images are processed in strips of rows (bounded memory)


# ---------------------------------------------------------------------------- result
@dataclass(frozen=True)
class NoiseFit:
    """Result of :func:`estimate_noise`.

    Attributes
    ----------
    gain : float
        ADU per electron (per *effective* electron for rescaled data).
    offset : float
        ADU of zero signal (the camera baseline).
    read_noise_e : float
        Gaussian noise floor in electrons rms (camera read noise; on integer data including
        the ADC rounding noise).
    offset_given : bool
        The offset was given, not fitted.
    n_bins : int
        Intensity bins used by the fit.
    read_var_e2 : float
        The fitted read-noise variance (electrons^2) before ``read_noise_e = sqrt(max(., 0))``:
        negative when the noise floor is below what the fit can resolve.
    n_windows : int
        Flat 3 x 3 windows that entered the bins (over all images).
    n_images : int
        Images pooled.
    integer_valued : bool
        All pixels were integers (rounded by an ADC).
    gain_se, offset_se, read_noise_se : float
        Jackknife standard errors over spatial tiles (NaN when there are too few; offset_se is
        0 when the offset was given). They cover the noise of the estimate, not the biases
        of the limits in ``docs/acquisition.md``.
    bin_mean, bin_variance, bin_count, bin_used : tuple
        The variance line's points: per intensity bin, the mean intensity (ADU), the noise
        variance (ADU^2), the number of windows, and whether the bin entered the fit (False:
        too few windows, clipped, or rejected as structured).
    bin_mean3, bin_kappa3, bin_count3 : tuple
        The third-cumulant points (stricter flatness gate): mean intensity (ADU), noise third
        cumulant (ADU^3, ``gain^2 (mean - offset)`` in theory), number of windows.
    """

    gain: float
    offset: float
    read_noise_e: float
    offset_given: bool
    n_bins: int
    read_var_e2: float = math.nan
    n_windows: int = 0
    n_images: int = 1
    integer_valued: bool = False
    gain_se: float = math.nan
    offset_se: float = math.nan
    read_noise_se: float = math.nan
    bin_mean: tuple[float, ...] = ()
    bin_variance: tuple[float, ...] = ()
    bin_count: tuple[int, ...] = ()
    bin_used: tuple[bool, ...] = ()
    bin_mean3: tuple[float, ...] = ()
    bin_kappa3: tuple[float, ...] = ()
    bin_count3: tuple[int, ...] = ()

    def to_electrons(self, adu):
        """Convert ADU to photo-electrons above the offset: ``(adu - offset) / gain``."""
        return (np.asarray(adu, dtype=float) - self.offset) / self.gain

    def as_dict(self) -> dict:
        """JSON-safe dictionary (floats, ints, bools, lists; NaN becomes None)."""

        def clean(v):
            if isinstance(v, tuple | list):
                return [clean(x) for x in v]
            if isinstance(v, bool | np.bool_):
                return bool(v)
            if isinstance(v, int | np.integer):
                return int(v)
            v = float(v)
            return v if math.isfinite(v) else None

        return {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------- inputs
def _as_list(images) -> list[np.ndarray]:
    if (
        isinstance(images, np.ndarray)
        or hasattr(images, "__array__")
        and not isinstance(images, list | tuple)
    ):
        arr = np.asarray(images)
        if arr.ndim != 2:
            raise PiddpmError(
                f"images must be a 2-D array or a list of 2-D arrays, got an array of shape "
                f"{arr.shape}"
            )
        return [arr]
    if not isinstance(images, Sequence) or isinstance(images, str | bytes) or not images:
        raise PiddpmError(
            f"images must be a 2-D array or a non-empty list of 2-D arrays, got {images!r:.80}"
        )
    out = []
    for i, im in enumerate(images):
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise PiddpmError(f"image {i} must be 2-D, got shape {arr.shape}")
        out.append(arr)
    return out


def _prepare(arr: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Float64 image, mask of usable pixels, and whether it is integer-valued."""
    if arr.dtype.kind not in "iuf":
        raise PiddpmError(f"image {index} must be real numbers, got dtype {arr.dtype}")
    h, w = arr.shape
    if min(h, w) < _MIN_SIDE:
        raise PiddpmError(
            f"image {index} of size {h} x {w} is too small to fit the noise; expected at "
            f"least {_MIN_SIDE} x {_MIN_SIDE} pixels (a few hundred square is better)"
        )
    a = arr.astype(np.float64)
    valid = np.isfinite(a)
    if arr.dtype.kind in "iu":
        valid &= arr != np.iinfo(arr.dtype).max
    finite = a[valid]
    if finite.size == 0:
        raise PiddpmError(f"image {index} has no finite pixel below saturation")
    top = finite.max()
    if top == finite.min():
        raise PiddpmError(
            f"image {index} is constant (every pixel is {top:g}); expected a raw camera image "
            "with photon noise"
        )
    if np.count_nonzero(finite == top) > 1:  # clipped at a lower level (12-bit in uint16)
        valid &= a != top
    if finite.min() >= 0:  # non-negative data: zeros are clipped, not measured
        valid &= a != 0
    integer = bool(np.all(finite == np.round(finite)))
    bad = ~np.isfinite(a)
    if bad.any():  # clipped values stay (they bin their windows); non-finite ones cannot
        a[bad] = np.median(finite)
    return a, valid, integer


def _strips(a: np.ndarray, valid: np.ndarray, integer: bool):
    """Split a large image into strips of rows that overlap by the window border, so that
    every window is computed once and memory stays bounded."""
    h, w = a.shape
    e = _BORDER
    rows = max(_STRIP_PIXELS // w, 8 * e)
    if h <= rows + 2 * e:
        return [(a, valid, integer)]
    out = []
    for start in range(0, h - 2 * e, rows):
        stop = min(start + rows + 2 * e, h)
        if stop - start < 4 * e + 1:  # a sliver: merge into the previous strip
            prev = out.pop()
            lo = h - (prev[0].shape[0] + stop - start - 2 * e)
            out.append((a[lo:], valid[lo:], integer))
            break
        out.append((a[start:stop], valid[start:stop], integer))
    return out


# ---------------------------------------------------------------------------- windows
@dataclass
class _Windows:
    """Per-window statistics of one image (flattened, interior windows)."""

    m: np.ndarray  # ring mean (ADU)
    x2: np.ndarray  # c^2-weighted 3 x 3 mean (ADU)
    rc: np.ndarray  # variance residual
    x8: np.ndarray  # c8^2-weighted 3 x 3 mean (ADU)
    x3: np.ndarray  # c^3-weighted 3 x 3 mean (ADU)
    r8: np.ndarray  # third-cumulant residual
    curv: np.ndarray  # |curvature| predicted from the ring (ADU)
    rss: np.ndarray  # ring residual sum of squares (ADU^2)
    curv9: np.ndarray  # the same from the 9 x 9 surround
    rss9: np.ndarray
    ok: np.ndarray  # window free of clipped pixels
    tile: np.ndarray  # jackknife tile of the window

    def take(self, idx) -> _Windows:
        return _Windows(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


def _windows(a: np.ndarray, valid: np.ndarray) -> _Windows:
    from scipy import ndimage  # lazy: importing piddpm.acquisition stays light

    shift = float(np.median(a))
    b = a - shift
    e = _BORDER

    def filt(k):
        return ndimage.correlate(b, k, mode="nearest")[e:-e, e:-e].ravel()

    moments = {h: _box_moments(b, h, e) for h in (1, _RING.radius, _OUTER.radius)}
    curv, rss, m = _RING.fit(moments)
    curv9, rss9, _ = _OUTER.fit(moments)
    size = 2 * e + 1
    ok = ndimage.minimum_filter(valid.view(np.uint8), size, mode="constant", cval=0) > 0
    h, w = a.shape[0] - 2 * e, a.shape[1] - 2 * e
    rows = np.minimum(np.arange(h) * _TILES // h, _TILES - 1)
    cols = np.minimum(np.arange(w) * _TILES // w, _TILES - 1)
    return _Windows(
        m=m + shift,
        x2=filt(_W2) + shift,
        rc=filt(_CC),
        x8=filt(_W8) + shift,
        x3=filt(_W3) + shift,
        r8=filt(_C8),
        curv=curv,
        rss=rss,
        curv9=curv9,
        rss9=rss9,
        ok=ok[e:-e, e:-e].ravel(),
        tile=(rows[:, None] * _TILES + cols[None, :]).ravel(),
    )


def _gate(win: _Windows, line: tuple[float, float], floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose surround is flat (no significant curvature, chi-square consistent with
    the noise): by the 5 x 5 ring (for rc), and also by the 9 x 9 surround (for r8)."""
    v = np.maximum(line[0] * win.m + line[1], floor)
    sd = np.sqrt(v)
    flat = (win.rss <= _RING.rss_limit * v) & (win.curv <= _CURV_LIMIT * _RING.curv_noise * sd)
    flat3 = flat & (win.rss9 <= _OUTER.rss_limit * v)
    flat3 &= win.curv9 <= _CURV_LIMIT * _OUTER.curv_noise * sd
    return flat, flat3


# ---------------------------------------------------------------------------- pilot
class _Source:
    """The window statistics of each image, kept between the two passes when they fit in
    ``_CACHE_PIXELS`` (else computed again: memory stays bounded by one image)."""

    def __init__(self, prepared) -> None:
        self.prepared = prepared
        small = sum(p[0].size for p in prepared) <= _CACHE_PIXELS
        self.cache: dict[int, _Windows] | None = {} if small else None

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, i: int) -> _Windows:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        win = _windows(*self.prepared[i][:2])
        if self.cache is not None:
            self.cache[i] = win
        return win


def _pilot(source: _Source) -> tuple[tuple[float, float], float, np.ndarray]:
    """A robust first variance line (from medians) and the bin edges."""
    per_image = max(_MAX_SAMPLE // len(source), 1)
    parts = []
    for i in range(len(source)):
        win = source[i]
        idx = np.flatnonzero(win.ok)
        if idx.size > per_image:
            idx = idx[:: -(-idx.size // per_image)]
        parts.append(win.take(idx))
    win = _Windows(*(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(_Windows)))  # fmt: skip
    if win.m.size < _MIN_WINDOWS:
        raise PiddpmError(
            f"only {win.m.size} usable 9 x 9 windows in the images (after excluding clipped "
            f"pixels); the noise fit needs at least {_MIN_WINDOWS}: give larger images"
        )
    edges = _bin_edges(win.m, _MIN_BIN)
    idx = np.digitize(win.m, edges[1:-1])
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(len(edges)))
    med, xm, cnt = [], [], []
    for k in range(len(edges) - 1):
        sel = order[bounds[k] : bounds[k + 1]]
        if sel.size >= _MIN_BIN // 2:
            med.append(np.median(win.rc[sel] ** 2) / 0.45494)  # chi2(1) median
            xm.append(np.mean(win.x2[sel]))
            cnt.append(sel.size)
    med, xm, cnt = np.array(med), np.array(xm), np.array(cnt)
    if med.size == 0 or np.max(med) <= 0:
        raise PiddpmError(
            "the images are constant (no pixel noise); expected raw camera images with noise"
        )
    floor = 0.05 * max(float(np.min(med[med > 0])), 1e-12)
    line = _robust_line(xm, np.maximum(med, floor), cnt)
    flat = _gate(win, line, floor)[0]
    if np.count_nonzero(flat) < _MIN_WINDOWS:
        raise PiddpmError(
            f"only {np.count_nonzero(flat)} flat windows found (of {win.m.size}); the noise "
            f"fit needs at least {_MIN_WINDOWS}: give larger images or images with more "
            "background or evenly lit areas"
        )
    scale = win.m.size / sum(int(np.count_nonzero(p[1])) for p in source.prepared)
    return line, floor, _bin_edges(win.m[flat], max(int(_MIN_BIN * scale), 10))


def _bin_edges(m: np.ndarray, min_count: int) -> np.ndarray:
    """Bin edges: quantiles (dense, dim levels) merged with square-root spaced levels
    (bright, sparse ones), then merged upwards until every bin holds ``min_count``."""
    lo, hi = np.quantile(m, [0.001, 1.0])
    if not hi > lo:
        raise PiddpmError(
            "the images are constant (every pixel has the same value); expected raw camera "
            "images with noise and at least two intensity levels"
        )
    quant = np.quantile(m, np.linspace(0.0, 1.0, _TARGET_BINS // 2 + 1))
    root = lo + np.linspace(0.0, math.sqrt(hi - lo), _TARGET_BINS + 1) ** 2
    inner = np.unique(np.concatenate([quant[1:-1], root[1:-1]]))
    counts = np.bincount(np.digitize(m, inner), minlength=inner.size + 1)
    keep, run = [], 0
    for i in range(inner.size, 0, -1):  # from the brightest bin down
        run += counts[i]
        if run >= min_count:
            keep.append(inner[i - 1])
            run = 0
    return np.concatenate([[-np.inf], np.sort(keep), [np.inf]])


def _robust_line(x, v, n, iters: int = 4) -> tuple[float, float]:
    """Weighted line ``v = a x + b`` (weights n / v^2), dropping bins far above it."""
    keep = np.ones(x.size, bool)
    a, b = 0.0, float(np.median(v))
    for _ in range(iters):
        model = np.maximum(a * x + b, 0.05 * v) if a else v
        w = n / model**2
        if np.count_nonzero(keep) >= 2 and np.ptp(x[keep]) > 0:
            a, b = _wls(x[keep], v[keep], w[keep])
        else:
            a, b = 0.0, float(np.average(v[keep], weights=w[keep]))
        model = np.maximum(a * x + b, 1e-12)
        keep = (v - model) / model < _OUTLIER + 3.0 * np.sqrt(2.0 / n)
    return float(a), float(b)


def _wls(x, y, w) -> tuple[float, float]:
    sw = w.sum()
    xm, ym = (w * x).sum() / sw, (w * y).sum() / sw
    sxx = (w * (x - xm) ** 2).sum()
    a = (w * (x - xm) * (y - ym)).sum() / sxx if sxx > 0 else 0.0
    return a, ym - a * xm


# ---------------------------------------------------------------------------- sums
_SUMS = ("n", "x2", "c1", "c2", "n3", "x8", "x3", "e1", "e2", "e3", "bad")


def _accumulate(source: _Source, line, floor, edges, n_groups) -> np.ndarray:
    """Power sums per (jackknife group, bin, quantity) over all images."""
    nb = len(edges) - 1
    size = n_groups * nb
    acc = np.zeros((len(_SUMS), n_groups, nb))
    for i in range(len(source)):
        win = source[i]
        group = (i * _TILES * _TILES + win.tile) % n_groups
        key = group * nb + np.digitize(win.m, edges[1:-1])
        flat, flat3 = _gate(win, line, floor)
        flat &= win.ok
        flat3 &= win.ok
        cols = [
            (flat, None),
            (flat, win.x2),
            (flat, win.rc),
            (flat, win.rc**2),
            (flat3, None),
            (flat3, win.x8),
            (flat3, win.x3),
            (flat3, win.r8),
            (flat3, win.r8**2),
            (flat3, win.r8**3),
            (~win.ok, None),
        ]
        for j, (sel, c) in enumerate(cols):
            wts = None if c is None else c[sel]
            acc[j] += np.bincount(key[sel], weights=wts, minlength=size).reshape(n_groups, nb)
    return acc


def _moments(s: np.ndarray) -> dict[str, np.ndarray]:
    """Per bin: the variance points (mean intensity x, noise variance v in ADU^2, effective
    count neff) and the kappa3 points (x3, k3 in ADU^3, n3); ``bad``: clipped fraction.

    A bin's variance is that of the 8-neighbour residual on windows with a flat 9 x 9
    surround (precise: 1.3 overlapping windows count as one independent) where at least
    90 % of its windows have one (structure-free levels); elsewhere that of the second
    difference on windows with a flat 5 x 5 ring (3.8 windows per independent one, blind
    to any quadratic structure).
    """
    n, sx2, c1, c2, n3, sx8, sx3, e1, e2, e3, bad = s
    with np.errstate(invalid="ignore", divide="ignore"):
        var_c = (c2 - c1**2 / n) / (n - 1) / _CC2
        m1, m2, m3 = e1 / n3, e2 / n3, e3 / n3
        var_8 = (m2 - m1**2) * n3 / (n3 - 1) / float((_C8**2).sum())
        k3 = (m3 - 3 * m1 * m2 + 2 * m1**3) * n3**2 / ((n3 - 1) * (n3 - 2)) / _C83
        use8 = (n3 >= _FLAT3_SHARE * n) & (n3 >= _MIN_BIN)
        return {
            "n": np.where(use8, n3, n),
            "neff": np.where(use8, n3 / _INFL_8, n / _INFL_C),
            "x": np.where(use8, sx8 / n3, sx2 / n),
            "v": np.where(use8, var_8, var_c),
            "n3": n3,
            "x3": sx3 / n3,
            "k3": k3,
            "bad": bad / (n + bad),
        }


# ---------------------------------------------------------------------------- fit
def _fit(s: np.ndarray, offset: float | None):
    """gain, offset, read variance (e^2) and the per-bin points, from the summed moments."""
    p = _moments(s)
    n, neff, x, v = p["n"], p["neff"], p["x"], p["v"]
    good = (n >= _MIN_BIN) & (p["bad"] <= _BAD_FRACTION) & np.isfinite(v) & (v > 0)
    if np.count_nonzero(good) < 2 or np.ptp(x[good]) <= 0:
        raise PiddpmError(
            f"the flat areas of the images cover {np.count_nonzero(good)} usable intensity "
            "level(s); the gain needs at least two: give images with structure and background "
            "(or several exposures) rather than a flat or constant field"
        )
    a, b = _robust_line(x[good], v[good], neff[good])
    model = np.maximum(a * x + b, 1e-12)
    used = good & ((v - model) / model < _OUTLIER + 3.0 * np.sqrt(2.0 / np.maximum(neff, 1)))
    p["used"] = used
    w = neff[used] / (2.0 * model[used] ** 2)  # 1 / var(v) per bin
    xm = np.average(x[used], weights=w)
    slope_se = 1.0 / math.sqrt(max(float((w * (x[used] - xm) ** 2).sum()), 1e-300))
    if not a > _MAX_SLOPE_SE * slope_se:
        lo, hi = float(np.min(x[used])), float(np.max(x[used]))
        raise PiddpmError(
            f"the gain is not determined: the noise variance rises by {a:.3g} +- "
            f"{slope_se:.2g} ADU^2 per ADU over the flat areas' intensity levels "
            f"{lo:.4g} to {hi:.4g} ADU; expected a clear Poisson rise: give raw camera images "
            "(not background-subtracted, denoised or rescaled in a nonlinear way) with both "
            "background and bright, evenly lit areas, or several exposures"
        )
    if offset is None:
        n3, x3, k3 = p["n3"], p["x3"], p["k3"]
        w = p["used"] & (n3 >= _MIN_BIN) & np.isfinite(k3)
        if not w.any():
            raise PiddpmError(
                "no intensity level has enough flat windows to fit the offset; give the "
                "offset (offset=..., e.g. from the camera metadata) or larger images"
            )
        weights = n3[w] / np.maximum(a * x3[w] + b, 1e-12) ** 3
        offset = float(np.average(x3[w] - k3[w] / a**2, weights=weights))
    return a, offset, (b + a * offset) / a**2, p


def _jackknife(acc: np.ndarray, offset) -> tuple[float, float, float]:
    """Delete-one-group jackknife standard errors of gain, offset and read variance."""
    g = acc.shape[1]
    if g < 3:
        return math.nan, math.nan, math.nan
    total = acc.sum(axis=1)
    reps = []
    for j in range(g):
        try:
            a, o, rv, _ = _fit(total - acc[:, j], offset)
        except PiddpmError:
            continue
        reps.append((a, o, rv))
    if len(reps) < 3:
        return math.nan, math.nan, math.nan
    r = np.array(reps)
    se = np.sqrt((len(r) - 1) / len(r) * ((r - r.mean(axis=0)) ** 2).sum(axis=0))
    return float(se[0]), float(se[1]), float(se[2])


def _sqrt_se(var: float, var_se: float) -> float:
    """Standard error of ``sqrt(max(var, 0))`` from that of ``var``: ``var_se / (2 sqrt var)``
    for a well-determined variance, ``sqrt(var_se)`` when it is near or below zero."""
    root = math.sqrt(max(var, 0.0))
    return math.sqrt(max(var, 0.0) + var_se) - root


def estimate_noise(images, *, offset: float | None = None) -> NoiseFit:
    """Fit the Poisson-Gaussian camera model to raw images (see the module docstring).

    Parameters
    ----------
    images : array or list of arrays
        One 2-D image or a list of 2-D images of the same camera and settings (any sizes and
        numeric dtype), in ADU as recorded. They are pooled into one fit.
    offset : float, optional
        The camera offset in ADU when known (metadata, a dark frame); it is then used as is
        and only gain and read noise are fitted. Recommended when the background is bright.

    Returns
    -------
    NoiseFit

    Raises
    ------
    PiddpmError
        Images too small (< 16 px a side, or fewer than 2000 flat windows), constant, flat
        (one intensity level), or without Poisson noise.
    """
    arrays = _as_list(images)
    if offset is not None:
        offset = float(offset)
        if not math.isfinite(offset):
            raise PiddpmError(f"offset must be a finite number of ADU, got {offset!r}")
    prepared = [_prepare(a, i) for i, a in enumerate(arrays)]
    source = _Source([strip for p in prepared for strip in _strips(*p)])
    line, floor, edges = _pilot(source)
    n_groups = min(len(source) * _TILES * _TILES, _MAX_GROUPS)
    acc = _accumulate(source, line, floor, edges, n_groups)
    a, o, read_var, p = _fit(acc.sum(axis=1), offset)
    gain_se, offset_se, read_var_se = _jackknife(acc, offset)
    show, show3 = p["n"] >= _MIN_BIN, p["n3"] >= _MIN_BIN
    return NoiseFit(
        gain=float(a),
        offset=float(o),
        read_noise_e=math.sqrt(max(read_var, 0.0)),
        offset_given=offset is not None,
        read_var_e2=float(read_var),
        n_bins=int(np.count_nonzero(p["used"])),
        n_windows=int(p["n"][p["used"]].sum()),
        n_images=len(prepared),
        integer_valued=all(q[2] for q in prepared),
        gain_se=gain_se,
        offset_se=0.0 if offset is not None else offset_se,
        read_noise_se=_sqrt_se(read_var, read_var_se),
        bin_mean=tuple(float(v) for v in p["x"][show]),
        bin_variance=tuple(float(v) for v in p["v"][show]),
        bin_count=tuple(int(v) for v in p["n"][show]),
        bin_used=tuple(bool(v) for v in p["used"][show]),
        bin_mean3=tuple(float(v) for v in p["x3"][show3]),
        bin_kappa3=tuple(float(v) for v in p["k3"][show3]),
        bin_count3=tuple(int(v) for v in p["n3"][show3]),
    )


# ---------------------------------------------------------------------------- ranges
def _levels(a: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Robust background (5th percentile) and peak (99.9th percentile) levels in ADU."""
    from scipy import ndimage

    w = valid.astype(float)
    num = ndimage.gaussian_filter(np.where(valid, a, 0.0), 1.0, mode="nearest")
    den = ndimage.gaussian_filter(w, 1.0, mode="nearest")
    smooth = (num / np.maximum(den, 1e-12))[den > 0.5]
    return float(np.percentile(smooth, 5.0)), float(np.percentile(a[valid], 99.9))


def noise_ranges(images, fit: NoiseFit, *, margin: float = 1.5) -> dict:
    """Simulation ranges (in :class:`piddpm.data.MicroscopeRanges` units) from a noise fit.

    Per image: ``peak_e = (p99.9 - offset) / gain`` and ``background_e = (p5 of the lightly
    smoothed image - offset) / gain`` (>= 0), ``photons = peak_e - background_e`` (>= 1),
    ``background_fraction = background_e / photons``.

    Returns
    -------
    dict
        ``photons``: (min / margin, max * margin); ``background_fraction``: (min / margin,
        max * margin) clamped to [0, 1]; ``read_noise``: (read / margin, read * margin);
        ``per_image``: list of dicts (``peak_e, background_e, photons, background_fraction``).
    """
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 1):
        raise PiddpmError(f"margin must be a number >= 1, got {margin!r}")
    if not fit.gain > 0:
        raise PiddpmError(f"fit.gain must be > 0 ADU per electron, got {fit.gain!r}")
    per = []
    for i, arr in enumerate(_as_list(images)):
        a, valid, _ = _prepare(arr, i)
        bg_adu, peak_adu = _levels(a, valid)
        peak_e = (peak_adu - fit.offset) / fit.gain
        bg_e = max((bg_adu - fit.offset) / fit.gain, 0.0)
        photons = max(peak_e - bg_e, 1.0)
        per.append(
            {
                "peak_e": float(peak_e),
                "background_e": float(bg_e),
                "photons": float(photons),
                "background_fraction": float(bg_e / photons),
            }
        )
    ph = [p["photons"] for p in per]
    bf = [p["background_fraction"] for p in per]
    read = fit.read_noise_e
    return {
        "photons": (float(min(ph) / margin), float(max(ph) * margin)),
        "background_fraction": (
            float(min(min(bf) / margin, 1.0)),
            float(min(max(bf) * margin, 1.0)),
        ),
        "read_noise": (float(max(read / margin, 0.0)), float(max(read * margin, 0.0))),
        "per_image": per,
    }
