"""The batch runner behind the ``certify``, ``attack`` and ``curvature`` commands (issue 12: a thin CLI).

:func:`run_batches` processes points in batches with a progress bar, keeping finished rows in ``OUT.partial``
(resumption keyed by content, :mod:`sorobust.resume`); :func:`finish` writes the records, the summary and its
provenance atomically and removes the partial files. :func:`load_inputs` gives a command its model and points on
its device and dtype. The command line only parses, checks and dispatches (:mod:`sorobust.cli`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .errors import SorobustError

__all__ = ["run_batches", "finish", "load_inputs", "device", "read_partial_rows"]


def read_partial_rows(partial: Path, columns) -> list:
    """Rows of a certify/attack ``.partial``, checked to be whole: the expected header and point indices 0, 1, …
    in order (several rows per point allowed); raises ``ValueError`` otherwise."""
    from .artifacts import read_tsv

    rows = read_tsv(partial)
    expected = 0
    for r in rows:
        if list(r) != list(columns) or not isinstance(r["idx"], int):
            raise ValueError("its columns are not the expected ones")
        if r["idx"] == expected:
            expected += 1
        elif r["idx"] != expected - 1:
            raise ValueError(f"point indices jump to {r['idx']} after {expected - 1}")
    return rows


def run_batches(args, X, y, fn, columns, option_keys):
    """Process (X, y) in batches with a progress bar, keeping finished rows in OUT.partial for resumption.

    The partial rows are reused only if ``OUT.partial.json`` records the same resume key: every option, the
    sha256 of the checkpoint and of the data files, and the numerics version of the stage
    (:func:`sorobust.resume.resume_key`); otherwise the run starts afresh and says so. Unreadable partial files
    are set aside (:func:`sorobust.resume.set_aside`)."""
    from .artifacts import write_json, write_tsv
    from .data import raw_dir
    from .resume import key_mismatch, resume_key, say, set_aside

    out = Path(args.out)
    partial = Path(str(out) + ".partial")
    partial_meta = Path(str(out) + ".partial.json")
    key = resume_key("attack" if args.command == "attack" else "certify",
                     {k: getattr(args, k) for k in option_keys}, checkpoint=args.checkpoint,
                     data=raw_dir(args.dataset, args.data_dir))
    rows = []
    if partial.exists():
        try:
            stored = json.loads(partial_meta.read_text()).get("key")
        except (OSError, ValueError, AttributeError) as e:
            set_aside(partial, f"its key file '{partial_meta.name}' is missing or unreadable: {type(e).__name__}")
        else:
            diff = key_mismatch(stored, key)
            if diff:
                say(f"note: '{partial}' was made with another {'; '.join(diff)}; starting afresh")
            else:
                try:
                    rows = read_partial_rows(partial, columns)
                except (OSError, ValueError, KeyError, IndexError) as e:
                    set_aside(partial, str(e) or type(e).__name__)
    bs = args.batch_size
    done = rows[-1]["idx"] + 1 if rows else 0
    start = done - done % bs if done < len(y) else done
    rows = [r for r in rows if r["idx"] < start]
    if rows:
        say(f"note: resuming '{out}' from '{partial.name}': {start} of {len(y)} points already done")
    write_json(partial_meta, {"key": key})
    bar = tqdm(total=len(y), initial=start, desc=f"{args.command} {out.name}", disable=args.no_progress,
               unit="pt")
    for i in range(start, len(y), bs):
        rows.extend(fn(i, X[i:i + bs], y[i:i + bs]))
        write_tsv(partial, rows, columns)
        bar.update(min(i + bs, len(y)) - bar.n)
    bar.close()
    return rows, partial, partial_meta


def device(name: str) -> torch.device:
    """The torch device ``name`` names (``auto``: CUDA when available); one line if it cannot be used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SorobustError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SorobustError(f"device '{name}' asked for but CUDA is not available; use --device cpu")
    return dev


def load_inputs(args):
    """The model and the (X, y) points a certify/attack command works on, on its device and dtype."""
    from . import data, models

    dtype, dev = getattr(torch, args.dtype), device(args.device)
    model = models.load(args.checkpoint, arch=args.arch).to(dev, dtype)
    X, y = data.load_tensors(args.dataset, args.split, data_dir=args.data_dir, limit=args.limit)
    return model, X.to(dev, dtype), y.to(dev)


def finish(args, rows, columns, summary, keys, partial, partial_meta, t_total):
    """Write the per-point records ``OUT`` and the summary ``OUT.json`` with its provenance (inputs hashed, options
    ``keys``, seed, wall time), each atomically, then remove the partial files."""
    from .artifacts import provenance, write_json, write_tsv
    from .data import raw_dir

    out = Path(args.out)

    inputs = {"checkpoint": args.checkpoint, "data": raw_dir(args.dataset, args.data_dir)}
    summary["provenance"] = provenance(
        command=" ".join(["sorobust"] + sys.argv[1:]) if sys.argv and "sorobust" in sys.argv[0] else args.command,
        config={k: getattr(args, k) for k in keys}, inputs=inputs, seeds={"seed": args.seed},
        timings={"total_s": t_total})
    write_tsv(out, rows, columns)
    write_json(out.with_suffix(".json"), summary)
    for p in (partial, partial_meta):
        if p.exists():
            p.unlink()
