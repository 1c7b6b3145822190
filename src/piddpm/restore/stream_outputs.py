"""The output stores of :mod:`piddpm.restore.stream`: one OME-Zarr store per output (the
restored mean, and the std and residual maps when asked for), their checks before a run, the
settings a resumed run must repeat, and the provenance every store carries.

Each output is an NGFF image of its own, as the in-memory CLI writes each to the file its
option names: NGFF 0.4 gives one ``multiscales`` image per group (an image nested in another
image's group is not part of the specification, and viewers would not show it). The mean's
store holds the record of finished chunks; a chunk is recorded after every output's data of
it is written, so a resumed run skips it for all outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from piddpm import PiddpmError
from piddpm.restore.stream_store import create_store, set_attrs, stream_state, write_pyramid

__all__ = [
    "OUTPUT_NOTES",
    "check_outputs",
    "check_resumable",
    "create_stores",
    "finish_stores",
    "provenance",
    "run_settings",
]

OUTPUT_NOTES = {
    "mean": "restored image (mean of the samples), input units",
    "std": "per-pixel std of the posterior samples, input units",
    "residual": "data consistency |A y - x| / (p_high - p_low) per plane, dimensionless",
}
_LABELS = {"mean": "output", "std": "std (uncertainty)", "residual": "residual"}


def _key(path) -> str:
    return os.path.abspath(path)


def check_outputs(paths: dict[str, Path], source, resume: bool, overwrite: bool) -> None:
    """Refuse an output store that is the input or another output, lies in a missing folder,
    or exists (unless ``resume`` continues the run or ``overwrite`` replaces it)."""
    seen = {_key(source): "the input"} if isinstance(source, str | os.PathLike) else {}
    for name, out in paths.items():
        label = f"the {_LABELS[name]} store"
        if _key(out) in seen:
            raise PiddpmError(f"{out}: {label} is {seen[_key(out)]}; choose another path")
        seen[_key(out)] = label
        if not out.parent.is_dir():
            raise PiddpmError(f"{out}: the folder {out.parent} does not exist; create it first")
    main = paths["mean"]
    if resume and main.exists():
        return  # check_resumable compares the stores with the started run
    there = [out for out in paths.values() if out.exists()]
    for out in there:
        if not overwrite:
            hint = (
                f"{main} does not exist, so there is nothing to resume; pass --overwrite"
                if resume
                else "pass --resume to continue it or --overwrite to replace it"
            )
            raise PiddpmError(f"{out}: already exists; {hint}")
        if not (out.is_dir() and (out / ".zgroup").exists()):
            raise PiddpmError(f"{out}: exists and is not a Zarr store; remove it yourself")
    for out in there:
        shutil.rmtree(out)


def check_resumable(paths: dict[str, Path], state: dict, settings: dict) -> None:
    """Refuse to resume into stores that are not a started run with these settings."""
    main = paths["mean"]
    old = state.get("settings")
    if old is None or "outputs" not in state:
        raise PiddpmError(
            f"{main}: not a started piddpm streaming store, nothing to resume; choose a new "
            "output path or pass --overwrite"
        )
    if old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if "restore" in diff:
            r0, r1 = old.get("restore", {}), settings["restore"]
            diff += [f"restore.{k}" for k in sorted(set(r0) | set(r1)) if r0.get(k) != r1.get(k)]
        raise PiddpmError(
            f"{main}: was started with other settings ({', '.join(diff)}); resume with the same "
            "ones or write a new store"
        )
    if isinstance(state["outputs"], list) and state["outputs"] != ["mean"]:
        raise PiddpmError(
            f"{main}: was started by an older piddpm that kept std/residual inside the store; "
            "write a new store (--overwrite)"
        )
    for name, out in paths.items():
        if name != "mean" and stream_state(out).get("part_of") != _key(main):
            raise PiddpmError(
                f"{out}: missing, or not the {_LABELS[name]} store of {main}; the run cannot be "
                "resumed without it: pass --overwrite to start again"
            )


def _jsonable(value):
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "shape"):  # an array (a PSF): its digest
        import hashlib

        arr = np.ascontiguousarray(np.asarray(value, dtype=np.float64))
        return f"array {arr.shape} sha1 {hashlib.sha1(arr.tobytes()).hexdigest()[:16]}"
    return str(value)


def run_settings(where, spec: dict, kw: dict, paths: dict[str, Path]) -> dict:
    """What a resumed run must repeat: input, shape, axes, chunking, restore keywords and
    the extra output stores (the keys of a plain run are those of earlier versions)."""
    skip = {"progress", "device", "batch_size"}  # do not change the result
    restore = {k: _jsonable(v) for k, v in sorted(kw.items()) if k not in skip}
    out = {"input": where, "shape": list(spec["shape"]), "axes": spec["axes"]}
    if spec["input_axes"] != spec["axes"]:
        out["input_axes"] = spec["input_axes"]
    out |= {"chunk": spec["chunk"], "levels": spec["levels"]}
    if spec.get("border_pad"):  # learned methods mirror the image borders (restore_planes)
        out["border_pad"] = spec["border_pad"]
    extra = {n: _key(p) for n, p in paths.items() if n != "mean"}
    if extra:
        out["outputs"] = extra
    return json.loads(json.dumps(out | {"restore": restore}))


def provenance(meta: dict, state: dict, spec: dict, where: str, executor, paths) -> dict:
    """The restore's metadata, with the whole-plane ranges, RL counts, the axes and the
    chunking (each store adds its ``content``)."""
    from piddpm.baselines import RL_MAX_ITER, RL_TAU

    meta = json.loads(json.dumps(meta, default=str))
    ranges = state["ranges"]
    norm = meta.setdefault("normalisation", {})
    norm["ranges"] = ranges if len(ranges) <= 64 else ranges[:64] + ["..."]
    norm["scope"] = "whole plane (exact percentiles, the in-memory rule), not per chunk"
    steps = state.get("steps")
    if steps:
        meta["steps"] = steps[0] if len(set(steps)) == 1 else steps[:64]
        meta["rl_iterations"] = steps[:64]
        meta["rl_iteration_rule"] = (
            "per plane: discrepancy principle on the central tile of the whole plane (stop when "
            f"the rms residual |A u - x| reaches {RL_TAU} x the Immerkaer noise estimate; at "
            f"most {RL_MAX_ITER})"
        )
    meta.update(input=where, input_axes=spec["input_axes"], axes=spec["axes"])
    meta["stream"] = {
        "chunk": spec["chunk"],
        "chunks": int(np.prod(spec["grid"])),
        "pyramid_levels": spec["levels"],
        "region": "each chunk restored with the plane's tiles that reach into it",
        "executor": str(executor) if executor else "in process",
        "outputs": {n: {"store": str(p), "content": OUTPUT_NOTES[n]} for n, p in paths.items()},
    }
    if spec["input_axes"] != spec["axes"]:
        meta["stream"]["axis_order"] = (
            f"input axes {spec['input_axes']} written in the OME-Zarr order {spec['axes']}"
        )
    return meta


def create_stores(paths: dict[str, Path], spec: dict, meta: dict, state: dict) -> None:
    """Every output store, empty, with its provenance; the mean's store last, with the run
    state (``outputs`` in it marks the run as started, so resume finds complete stores)."""
    main = paths["mean"]
    for name in sorted(paths, key=lambda n: n == "mean"):
        create_store(paths[name], spec, record=name == "mean")
        set_attrs(paths[name], piddpm=dict(meta, content=OUTPUT_NOTES[name]))
        if name != "mean":
            set_attrs(
                paths[name],
                piddpm_stream={"part_of": _key(main), "output": name, "complete": False},
            )
    state["outputs"] = {n: str(p) for n, p in paths.items()}
    set_attrs(main, piddpm_stream=dict(state, complete=False, settings=spec["settings"]))


def finish_stores(paths: dict[str, Path], spec: dict, state: dict) -> None:
    """The pyramids of every store, then each store marked complete (the mean's last)."""
    for out in paths.values():
        write_pyramid(out, spec["levels"])
    for name, out in paths.items():
        if name != "mean":
            set_attrs(out, piddpm_stream=dict(stream_state(out), complete=True))
    set_attrs(paths["mean"], piddpm_stream=dict(state, complete=True, settings=spec["settings"]))
