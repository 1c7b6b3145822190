"""Exports of piddpm models to other ecosystems: :func:`export_bmz` writes a BioImage Model
Zoo package (:mod:`piddpm.export.bmz`; the modules it runs: :mod:`piddpm.export.modules`).
Reading such a package back is :mod:`piddpm.models.bmz`."""

from __future__ import annotations

from piddpm.export.bmz import BMZExport, export_bmz

__all__ = ["BMZExport", "export_bmz"]
