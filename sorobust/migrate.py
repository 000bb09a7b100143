"""Migrate a results folder's certify records to the path grammar in which records hold radii (issue 12).

Before issue 12 a certify record was written per radius, ``certify/{model}/{certifier}-{targets}-r{rho}-n{ntest}``,
and carried a ``certified`` column (certified at that ρ). Certificates do not depend on ρ, so a record now holds
each point's certificate once, at ``certify/{model}/{certifier}-{targets}-n{ntest}``, and the radius belongs to the
table (:func:`sorobust.summaries.certified_at`). This command moves the expensive records instead of recomputing
them:

* every ``certified`` cell is checked to equal the one rule at the record's ρ (its provenance's ``config.rho``);
  any disagreement stops the migration of that record (the record is not what its path says);
* the column is dropped, the other cells are copied byte for byte (the certificates are the numbers computed);
* the summary's radius-dependent fields are replaced by those :func:`sorobust.summaries.of_records` computes
  (``certified_accuracy_at`` the record's ρ), checked against the old ``certified_accuracy``, and its provenance
  gains ``migrated`` (the old path, what changed, the migrating code's version, the time);
* the record's log and benchmark files move with it; a record already at the new path must hold the same
  certificates (else the migration stops: two different computations claim one path).

Files are written atomically, and the old files removed only after the new ones exist, so an interrupted migration
can be rerun. Tables, figures, the plan and the manifest are regenerated afterwards by the workflow.

Usage: ``python -m sorobust.migrate results/quick results/smoke ...`` (``--dry-run`` lists what would move).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .artifacts import read_tsv, write_json, write_tsv
from .errors import SorobustError
from .summaries import of_records, radii, row_certified

#: a certify record name of the old grammar: {certifier}-{targets}-r{rho}-n{ntest}
OLD_NAME = re.compile(r"^(?P<head>.+-(?:all|runner-up|random))-r(?P<rho>[^-/]+)-n(?P<n>\d+|all)$")
#: the columns compared when a record already stands at the new path (time_s differs between two runs)
SAME = ("idx", "label", "pred", "correct", "target", "certificate", "converged")


def plan(results: Path) -> list[tuple[Path, Path]]:
    """(old record, new record) for every certify record of the old grammar under ``results``."""
    out = []
    for tsv in sorted((results / "certify").glob("*/*/*.tsv")):
        m = OLD_NAME.match(tsv.stem)
        if m:
            out.append((tsv, tsv.with_name(f"{m['head']}-n{m['n']}.tsv")))
    return out


def _moved(results: Path, old: Path, new: Path, sub: str, suffix: str) -> tuple[Path, Path]:
    rel_old, rel_new = old.relative_to(results / "certify"), new.relative_to(results / "certify")
    return (results / sub / "certify" / rel_old.with_suffix(suffix),
            results / sub / "certify" / rel_new.with_suffix(suffix))


def migrate_record(results: Path, old: Path, new: Path) -> str:
    """Migrate one record (module docstring); returns what was done, one line."""
    rows = read_tsv(old)
    summary = json.loads(old.with_suffix(".json").read_text())
    prov = summary["provenance"]
    rho = prov["config"].get("rho")
    if rho is None or len(radii(rho)) != 1:
        raise SorobustError(f"{old}: its provenance names no single radius (config.rho = {rho!r})")
    rho = radii(rho)[0]
    if rows and "certified" not in rows[0]:
        raise SorobustError(f"{old}: no 'certified' column; not a record of the old grammar")
    bad = [r["idx"] for r in rows if bool(r["certified"]) != row_certified(r, rho)]
    if bad:
        raise SorobustError(f"{old}: 'certified' disagrees with certified_at(ρ = {rho:g}) at idx "
                            f"{', '.join(map(str, bad[:10]))}; not migrated (the record is not what its path says)")
    columns = [c for c in rows[0] if c != "certified"] if rows else []
    kept = [{c: r[c] for c in columns} for r in rows]
    if new.exists():
        there = read_tsv(new)
        if [[r.get(c) for c in SAME] for r in there] != [[r.get(c) for c in SAME] for r in kept]:
            raise SorobustError(f"{old}: {new.name} already exists with other certificates; remove one of them")
        for p in (old, old.with_suffix(".json"), *(_moved(results, old, new, s, x)[0]
                                                   for s, x in (("logs", ".log"), ("benchmarks", ".tsv")))):
            p.unlink(missing_ok=True)
        return f"{old.relative_to(results)}: same certificates as {new.name}; removed"
    want = of_records("certify", kept, rho=rho, time_s=prov.get("timings", {}).get("total_s"),
                      method=prov["config"].get("method"))
    old_acc = summary.pop("certified_accuracy", None)
    got = want["certified_accuracy_at"][f"{rho:g}"]
    if old_acc is not None and abs(old_acc - got) > 1e-12:
        raise SorobustError(f"{old}: its summary's certified_accuracy {old_acc} is not the records' {got}")
    summary.pop("rho", None)
    summary.update(want)
    prov["migrated"] = {"from": str(old.relative_to(results)),
                        "change": "records hold radii (issue 12): the 'certified' column at this radius dropped after "
                                  "checking it against certified_at; certificates copied unchanged",
                        "by": f"sorobust {__version__} (sorobust.migrate)",
                        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    write_tsv(new, kept, columns)
    write_json(new.with_suffix(".json"), dict(sorted(summary.items())))
    for sub, suffix in (("logs", ".log"), ("benchmarks", ".tsv")):
        src, dst = _moved(results, old, new, sub, suffix)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)
    old.unlink()
    old.with_suffix(".json").unlink()
    return f"{old.relative_to(results)} -> {new.name}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sorobust.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results folders (results/{profile})")
    p.add_argument("--dry-run", action="store_true", help="list the records that would move, change nothing")
    args = p.parse_args(argv)
    try:
        for res in map(Path, args.results):
            if not (res / "certify").is_dir():
                raise SorobustError(f"{res}: no certify/ folder; is it a results folder?")
            todo = plan(res)
            for old, new in todo:
                print(f"would move {old} -> {new.name}" if args.dry_run else migrate_record(res, old, new))
            print(f"{res}: {len(todo)} record(s) {'to migrate' if args.dry_run else 'migrated'}", file=sys.stderr)
    except SorobustError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
