"""Provenance records and crash-safe writing of result files.

Every result the harness writes should be traceable to the exact code, environment, inputs and seeds that
produced it, and should never be left half-written:

* :func:`provenance` builds the record (code version + hash, environment, command, config, input hashes,
  seeds, timings, creation time) that goes next to each result, e.g. via :func:`write_json`.
* :func:`atomic_write` (and :func:`write_json` / :func:`write_tsv`, which use it) writes to a temporary file
  in the destination directory and renames it onto the destination only when writing succeeded, so a crash
  or an exception leaves either the previous file or nothing, never a truncated file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from sorobust.errors import SorobustError

PathLike = Union[str, os.PathLike]

_PKG_DIR = Path(__file__).resolve().parent

# Read the process umask once (os.umask can only be read by setting it) so that files created through
# mkstemp (mode 0600) get the permissions an ordinary open() would have given them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# --------------------------------------------------------------------------------------------- hashing


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes.

    Args:
        path: File to hash.
        chunk_size: Read size in bytes.

    Returns:
        The lowercase hex digest (64 characters).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(files: Mapping[str, str]) -> str:
    """SHA-256 of a directory listing: for each file, in path order (compared part by part, as ``Path`` objects
    sort), its relative path, a NUL, its sha256 (hex) and a newline.

    Args:
        files: Relative POSIX path -> sha256 of every regular file of the directory.

    Returns:
        The hex digest :func:`provenance` records for a directory input, so a listing of file hashes (such as
        ``data.json``'s) can be checked against it.
    """
    h = hashlib.sha256()
    for rel in sorted(files, key=lambda r: r.split("/")):
        h.update(rel.encode("utf-8") + b"\0" + files[rel].encode("ascii") + b"\n")
    return h.hexdigest()


def _sha256_tree(path: Path) -> str:
    """SHA-256 over a directory: :func:`tree_digest` of its regular files (recursively)."""
    return tree_digest({p.relative_to(path).as_posix(): sha256_file(p) for p in path.rglob("*") if p.is_file()})


# --------------------------------------------------------------------------------------------- versions


def _git(*args: str) -> Optional[str]:
    """Run ``git -C <package dir> args``; stdout stripped, or ``None`` if git is absent or fails."""
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # `git status` must not take the index lock or rewrite the index
    env.setdefault("LC_ALL", "C")
    try:
        res = subprocess.run(
            ["git", "-C", str(_PKG_DIR), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.decode("utf-8", "replace").strip()


def _package_version() -> str:
    try:
        from sorobust import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - __init__ always defines it
        m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", (_PKG_DIR / "__init__.py").read_text())
        return m.group(1) if m else "unknown"


def _code_hash() -> str:
    """sha256 over ``sorobust/**/*.py``: for each file, sorted by path, its path, a NUL, its length, a NUL
    and its bytes."""
    h = hashlib.sha256()
    base = _PKG_DIR.parent
    files = sorted((p.relative_to(base).as_posix(), p) for p in _PKG_DIR.rglob("*.py") if p.is_file())
    for rel, p in files:
        data = p.read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0")
        h.update(data)
    return h.hexdigest()


def code_version() -> dict:
    """Identify the code that is running.

    Returns:
        ``{"version": str, "git_commit": str | None, "git_dirty": bool | None, "code_hash": str}`` where
        ``version`` is ``sorobust.__version__``; ``git_commit`` the HEAD commit of the git work tree
        containing the package (``None`` if it is not in a git checkout, git is not installed, or the
        repository has no commit yet); ``git_dirty`` whether ``git status --porcelain`` reports anything
        (tracked changes or untracked, non-ignored files) anywhere in that work tree outside its top-level
        ``results/`` folder (the workflow's own outputs are not code; ``None`` if not a git checkout);
        ``code_hash`` the sha256 over all ``sorobust/**/*.py`` files (relative path + bytes, in sorted path
        order), which identifies the code even outside git or with uncommitted changes.
    """
    inside = _git("rev-parse", "--is-inside-work-tree")
    if inside == "true":
        commit = _git("rev-parse", "--verify", "--quiet", "HEAD")
        status = _git("status", "--porcelain", "--", ":(top,exclude)results")
        dirty = None if status is None else bool(status)
    else:
        commit, dirty = None, None
    return {
        "version": _package_version(),
        "git_commit": commit or None,
        "git_dirty": dirty,
        "code_hash": _code_hash(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


#: SLURM's environment variables recorded by :func:`executor`, by the key they are recorded under (the first set
#: one of each list)
_SLURM_VARS = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    "job_name": ("SLURM_JOB_NAME",),
    "node": ("SLURMD_NODENAME", "SLURM_TOPOLOGY_ADDR", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    "partition": ("SLURM_JOB_PARTITION",),
    "cluster": ("SLURM_CLUSTER_NAME",),
    "account": ("SLURM_JOB_ACCOUNT",),
    "cpus_per_task": ("SLURM_CPUS_PER_TASK",),
    "mem_per_node_mb": ("SLURM_MEM_PER_NODE",),
    "gpus": ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"),
    "restart_count": ("SLURM_RESTART_COUNT",),
    "submit_host": ("SLURM_SUBMIT_HOST",),
}


def executor(env: Optional[Mapping[str, str]] = None) -> dict:
    """Where the process runs: under a SLURM job, or not under a scheduler.

    Args:
        env: The environment to read (default ``os.environ``).

    Returns:
        ``{"name": "slurm", "job_id": str, "node": str | None, "partition": str | None, ...}`` when
        ``SLURM_JOB_ID`` is set: every key of :data:`_SLURM_VARS` (``array_job_id``, ``array_task_id``, ``step_id``,
        ``job_name``, ``cluster``, ``account``, ``cpus_per_task``, ``mem_per_node_mb``, ``gpus``,
        ``restart_count``, ``submit_host``), each the value of the first of its variables that is set, as a string,
        else ``None``; otherwise ``{"name": "local"}``.
    """
    env = os.environ if env is None else env
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
        return {"name": "local"}
    out: dict = {"name": "slurm"}
    for key, names in _SLURM_VARS.items():
        out[key] = next((str(env[n]) for n in names if env.get(n)), None)
    return out


def environment() -> dict:
    """Describe the software and hardware environment.

    Returns:
        A JSON-serialisable dict with keys ``python`` (version), ``python_implementation``, ``torch``,
        ``torchvision`` (or ``None``), ``numpy`` (or ``None``), ``cuda`` (torch's CUDA version or ``None``),
        ``cuda_available``, ``device`` (the CUDA device name when CUDA is available, else the CPU model),
        ``platform``, ``machine``, ``hostname``, ``num_threads`` (``torch.get_num_threads()``), ``cpu_count`` and
        ``executor`` (:func:`executor`: the SLURM job, node and partition, or ``{"name": "local"}``).
    """
    import torch

    try:
        import torchvision

        tv_version: Optional[str] = str(torchvision.__version__)
    except Exception:
        tv_version = None
    try:
        import numpy

        np_version: Optional[str] = str(numpy.__version__)
    except Exception:
        np_version = None
    try:
        cuda_available = bool(torch.cuda.is_available())
    except Exception:
        cuda_available = False
    if cuda_available:
        try:
            device = f"cuda: {torch.cuda.get_device_name(torch.cuda.current_device())}"
        except Exception:
            device = "cuda: unknown device"
    else:
        device = f"cpu: {_cpu_model()}"
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": str(torch.__version__),
        "torchvision": tv_version,
        "numpy": np_version,
        "cuda": torch.version.cuda,
        "cuda_available": cuda_available,
        "device": device,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "num_threads": int(torch.get_num_threads()),
        "cpu_count": os.cpu_count(),
        "executor": executor(),
    }


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def provenance(
    command: str,
    config: Mapping[str, Any],
    inputs: Optional[Mapping[str, PathLike]] = None,
    seeds: Optional[Mapping[str, Any]] = None,
    timings: Optional[Mapping[str, Any]] = None,
) -> dict:
    """Build a provenance record for a result.

    Args:
        command: The command that produced the result (e.g. the CLI invocation).
        config: The full effective configuration (copied via a JSON round trip, so later mutation of the
            caller's dict does not change the record; must be serialisable by :func:`write_json`).
        inputs: Name -> path of every input file (checkpoints, data files). A directory is hashed as a tree
            (sorted relative paths + each file's sha256).
        seeds: Name -> seed of every RNG seed used.
        timings: Name -> seconds (or any JSON-able value).

    Returns:
        ``{"sorobust": code_version(), "environment": environment(), "command": str, "config": dict,
        "inputs": {name: {"path": str, "sha256": str}}, "seeds": dict, "timings": dict,
        "created": "YYYY-MM-DDTHH:MM:SSZ"}`` (UTC). Paths are absolute.

    Raises:
        SorobustError: An input path does not exist.
    """
    ins: dict = {}
    for name, p in (inputs or {}).items():
        path = Path(p).expanduser()
        if path.is_dir():
            digest = _sha256_tree(path)
        elif path.is_file():
            digest = sha256_file(path)
        else:
            raise SorobustError(f"input {name!r} not found: {path}")
        ins[str(name)] = {"path": str(path.resolve()), "sha256": digest}
    return {
        "sorobust": code_version(),
        "environment": environment(),
        "command": str(command),
        "config": _jsonable_copy(dict(config or {})),
        "inputs": ins,
        "seeds": _jsonable_copy(dict(seeds or {})),
        "timings": _jsonable_copy(dict(timings or {})),
        "created": _utc_now(),
    }


# --------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w") -> Iterator[io.IOBase]:
    """Open ``path`` for writing such that it is replaced only when the block succeeds.

    Writes go to a temporary file in the same directory (created with its parents if missing); on normal
    exit it is flushed, fsynced and ``os.replace``-d onto ``path`` (atomic on POSIX); if the block raises,
    the temporary file is deleted, the exception propagates, and ``path`` is untouched (absent if it was
    absent, the old content if it existed).

    Args:
        path: Destination file.
        mode: ``"w"`` (text, UTF-8, ``"\\n"`` newlines untranslated) or ``"wb"`` (binary).

    Yields:
        The open file object.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_write mode must be 'w', 'wt' or 'wb', got {mode!r}")
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # make the rename durable (best effort; not supported everywhere)
    try:
        dfd = os.open(str(parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _json_default(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths, sets, etc. for :mod:`json`."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.hex()
    mod = type(obj).__module__ or ""
    if mod.startswith("numpy"):
        if hasattr(obj, "tolist"):
            return obj.tolist()  # numpy scalar -> Python scalar, array -> nested lists
        return str(obj)  # dtype
    if mod.startswith("torch"):
        import torch

        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            return t.item() if t.dim() == 0 else t.tolist()
        if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
            return list(obj) if isinstance(obj, torch.Size) else str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, ensure_ascii=False,
                      allow_nan=False) + "\n"


def _jsonable_copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (``indent=2``, ``sort_keys=True``, UTF-8, trailing newline).

    Args:
        path: Destination file (parents created).
        obj: JSON-able data; numpy / torch scalars and arrays, ``Path``, sets, datetimes are converted.

    Raises:
        TypeError: ``obj`` contains something that cannot be converted; nothing is written then.
        ValueError: ``obj`` contains a non-finite float: strict JSON has no ``NaN``/``Infinity`` (the audit refuses
            them), so nothing is written.
    """
    text = _dumps(obj)  # serialise first: a TypeError then never even creates a temp file
    with atomic_write(path, "w") as f:
        f.write(text)


def _format_cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    mod = type(value).__module__ or ""
    if mod.startswith("torch") or mod.startswith("numpy"):
        low_precision = str(getattr(value, "dtype", "")).replace("torch.", "") in ("float32", "float16", "bfloat16")
        try:
            value = value.item()  # numpy scalar / 0-d or 1-element array or tensor -> Python scalar
        except (AttributeError, ValueError, RuntimeError):
            raise TypeError(f"column {column!r}: cannot write a non-scalar {type(value).__name__} to TSV") from None
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float) and low_precision:
            return format(value, ".9g")  # enough digits to round-trip a float32 exactly
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))  # shortest string that round-trips the float64 exactly
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if "\t" in value or "\n" in value or "\r" in value:
            raise ValueError(f"column {column!r}: value {value!r} contains a tab or newline")
        return value
    raise TypeError(f"column {column!r}: cannot write a {type(value).__name__} to TSV")


def write_tsv(path: PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Atomically write rows as a tab-separated file with a header line.

    Cells: ``None`` -> empty; bools -> ``1`` / ``0``; ints as is; floats with full precision (``repr``, the
    shortest string that reads back to the same float64; float32 numpy/torch scalars with ``.9g``);
    ``nan`` / ``inf`` / ``-inf`` as such; strings as is (they must not contain tabs or newlines); numpy /
    torch 0-d values are unwrapped first. Keys of a row that are not in ``columns`` are ignored.

    Args:
        path: Destination file (parents created).
        rows: One mapping per line.
        columns: Column order (the header).

    Raises:
        KeyError: A row lacks one of ``columns``.
        TypeError, ValueError: A value that cannot be written unambiguously. Nothing is written then.
    """
    columns = [str(c) for c in columns]
    for c in columns:
        if not c or "\t" in c or "\n" in c or "\r" in c:
            raise ValueError(f"invalid TSV column name {c!r}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate TSV column names in {columns!r}")
    lines = ["\t".join(columns)]
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise KeyError(f"row {i} lacks column(s) {', '.join(missing)}")
        lines.append("\t".join(_format_cell(row[c], c) for c in columns))
    text = "\n".join(lines) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\Z",
    re.IGNORECASE,
)


def _parse_cell(s: str) -> Any:
    if s == "":
        return None
    if _INT_RE.match(s):
        return int(s)
    if _FLOAT_RE.match(s):
        return float(s)
    return s


def read_tsv(path: PathLike) -> list:
    """Read a file written by :func:`write_tsv`.

    Cells that look like integers become ``int`` (so bools come back as ``0`` / ``1``), other numeric cells
    (including ``nan`` / ``inf``) ``float``, empty cells ``None``; everything else stays ``str``.

    Args:
        path: TSV file with a header line.

    Returns:
        A list of dicts, one per data line, keyed by the header's column names.

    Raises:
        ValueError: Empty file, or a line with a different number of fields than the header.
    """
    with open(path, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise ValueError(f"{path}: empty TSV file (no header line)")
    columns = lines[0].split("\t")
    out = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields, header has {len(columns)}")
        out.append({c: _parse_cell(v) for c, v in zip(columns, fields)})
    return out
