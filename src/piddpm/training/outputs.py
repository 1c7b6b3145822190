"""What a run writes besides checkpoints: CSV logs, PNG previews, the hardware description."""

from __future__ import annotations

import csv
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piddpm.training.distributed import DistInfo


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped.

    ``last_time_s`` is the ``time_s`` of the last kept row (0 without one), so a resumed
    run's clock continues.
    """

    def __init__(self, path: Path, fields: list[str] | None = None, *, after_step: int = 0):
        self.path, self.fields, self.last_time_s = path, fields, 0.0
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= after_step]
            if header:
                self.fields = list(header)
                text = ",".join(header) + "\n"
                tmp = path.with_suffix(".csv.tmp")
                with tmp.open("w", newline="", encoding="utf-8") as fh:
                    fh.write(text)
                    csv.DictWriter(fh, header).writerows(rows)
                os.replace(tmp, path)
                if rows and rows[-1].get("time_s"):
                    self.last_time_s = float(rows[-1]["time_s"])

    def write(self, row: dict[str, Any]) -> None:
        """Append a row (floats to 6 significant digits); the first row sets the header."""
        if self.fields is None:
            self.fields = list(row)
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_log(path: Path) -> list[dict[str, float]]:
    """Rows of a numeric CSV (``log.csv`` / ``val.csv``) as floats; [] if absent.

    Parameters
    ----------
    path : Path

    Returns
    -------
    list of dict
        One dict per row; a cell that is not a number is NaN.
    """
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out = {}
            for k, v in row.items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = math.nan
            rows.append(out)
    return rows


def psnr_db(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR per image of ``(B, 1, H, W)`` tensors (:func:`piddpm.metrics.psnr`, data range =
    each reference's max - min)."""
    from piddpm.metrics import psnr

    return torch.as_tensor(psnr(pred[:, 0].double(), ref[:, 0].double())).reshape(-1)


def write_preview(path: Path, rows: list[tuple[torch.Tensor, ...]]) -> None:
    """A PNG grid, one row per sample, each tile ``(H, W)`` scaled to its row's gt range."""
    from PIL import Image

    tiles = []
    for row in rows:
        ref = row[-1].float()
        lo, hi = float(ref.min()), float(ref.max())
        scale = 1.0 / max(hi - lo, 1e-12)
        imgs = [((t.float() - lo) * scale).clamp(0, 1) for t in row]
        sep = torch.ones(ref.shape[0], 2)
        parts = []
        for im in imgs:
            parts += [im, sep]
        tiles.append(torch.cat(parts[:-1], dim=1))
        tiles.append(torch.ones(2, tiles[-1].shape[1]))
    grid = torch.cat(tiles[:-1], dim=0)
    arr = (grid.numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)


def cpu_name() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device, dist: DistInfo) -> dict[str, Any]:
    """What the run ran on (stored in ``model.json``)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "world_size": dist.world_size,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
