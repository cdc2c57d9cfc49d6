"""The run folder: config, metrics, TensorBoard logs and checkpoints.

Layout of a run folder::

    config.yaml
    metrics.csv
    tb/seed_0/ ...            TensorBoard event files, one folder per seed
    checkpoints/latest.msgpack + latest.json
    checkpoints/best.msgpack   + best.json
    curve.png

Checkpoints are msgpack (via flax.serialization) plus a JSON sidecar, never
pickle, so loading one can never execute code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pathlib

import shutil
import tempfile
from typing import Any, Iterable

import numpy as np
import yaml

from teamrl.config import ConfigError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
CURVE_FILE = "curve.png"

_CHECKPOINT_FORMAT = 1


class RunExistsError(ConfigError):
    """Raised when a run folder already holds results and overwrite is off."""


# --------------------------------------------------------------------------
# Run folder


def check_run_dir_free(path, overwrite: bool) -> bool:
    """Raise RunExistsError if ``path`` holds an earlier run and overwrite is off.

    Returns whether the folder is occupied (and so would be replaced). Writes nothing, so
    callers can check before any other validation or compilation.
    """
    run_dir = pathlib.Path(path)
    occupied = run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir()))
    if occupied and not overwrite:
        raise RunExistsError(
            f"run folder '{run_dir}' already exists; pass overwrite=true "
            "to replace it or choose another out="
        )
    return occupied


def prepare_run_dir(path, overwrite: bool) -> pathlib.Path:
    """Create the run folder, refusing to clobber an earlier run.

    Checked before anything is written so that a refused run leaves the old
    folder untouched.
    """
    run_dir = pathlib.Path(path)
    if run_dir.exists():
        occupied = check_run_dir_free(run_dir, overwrite)
        if occupied:
            if run_dir.is_dir() and not run_dir.is_symlink():
                shutil.rmtree(run_dir)
            else:
                run_dir.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _fsync_dir(folder: pathlib.Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace.

    Readers see either the old file or the complete new one, never a torn
    write, even if the process is killed mid-save.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def write_config(run_dir, config_dict: dict) -> pathlib.Path:
    """Write ``config.yaml`` (key order preserved) atomically."""
    path = pathlib.Path(run_dir) / CONFIG_FILE
    text = yaml.safe_dump(config_dict, sort_keys=False)
    _atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_config(run_dir) -> dict:
    """Read ``config.yaml``; an empty file reads as ``{}``."""
    path = pathlib.Path(run_dir) / CONFIG_FILE
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {} if data is None else data


# --------------------------------------------------------------------------
# Metrics


def _as_number(value: Any) -> int | float | None:
    """Python int/float for numeric scalars (python, numpy or jax), else None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, bool):
        return int(value)
    # Coerce: np.float64 subclasses float, and its repr is 'np.float64(...)'.
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    try:
        arr = np.asarray(value)
    except Exception:
        return None
    if arr.size != 1:
        return None
    kind = arr.dtype.kind
    if kind in "iub":
        return int(arr.reshape(()))
    if kind == "f":
        return float(arr.reshape(()))
    return None


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    num = _as_number(value)
    if num is None:
        return str(value)
    if isinstance(num, int):
        return str(num)
    # repr gives the shortest exact form and 'nan' / 'inf' / '-inf'.
    return repr(num)


class MetricsWriter:
    """Appends metric rows to ``metrics.csv`` and mirrors them to TensorBoard.

    Each row must carry ``seed`` and ``env_steps``: TensorBoard logs go to
    ``tb/seed_{seed}`` with ``env_steps`` as the global step.
    """

    def __init__(self, run_dir, resume: bool):
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._header: list[str] | None = None
        self._tb_writers: dict[Any, Any] = {}

        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._drop_torn_tail()
            with open(self.path, newline="", encoding="utf-8") as f:
                first = next(csv.reader(f), None)
            self._header = first or None
            mode = "a"
        else:
            mode = "w"
        self._file = open(self.path, mode, newline="", encoding="utf-8")

    def _drop_torn_tail(self) -> None:
        # A crash mid-write can leave a partial last line; appending after it
        # would merge two rows into one corrupt line.
        with open(self.path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1  # 0 if there is no complete line
            f.truncate(cut)

    @property
    def header(self) -> list[str] | None:
        return None if self._header is None else list(self._header)

    def write(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self._header is None:
            self._header = list(rows[0].keys())
            self._file.write(_csv_line(self._header))
        for row in rows:
            self._file.write(_csv_line([_format_cell(row.get(k)) for k in self._header]))
        self._file.flush()
        for row in rows:
            self._write_tb(row)
        for w in self._tb_writers.values():
            w.flush()

    def _write_tb(self, row: dict) -> None:
        if "seed" not in row or "env_steps" not in row:
            return
        seed = _as_number(row["seed"])
        step = _as_number(row["env_steps"])
        seed = row["seed"] if seed is None else seed
        writer = self._tb_writers.get(seed)
        if writer is None:
            from tensorboardX import SummaryWriter  # lazy: slow import

            writer = SummaryWriter(str(self.run_dir / TB_DIR / f"seed_{seed}"))
            self._tb_writers[seed] = writer
        for key, value in row.items():
            if key in ("seed", "env_steps"):
                continue
            num = _as_number(value)
            # Non-finite cells (no finished episode yet, rows without an evaluation) stay
            # empty in TensorBoard; tensorboardX would warn about each one.
            if num is None or not math.isfinite(float(num)):
                continue
            writer.add_scalar(key, float(num), global_step=None if step is None else int(step))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        for w in self._tb_writers.values():
            w.close()
        self._tb_writers.clear()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullWriter:
    """The MetricsWriter of a process that does not write the run folder (processes other
    than 0 of a multi-process run): takes rows, writes nothing."""

    def write(self, rows: Iterable[dict]) -> None:
        pass

    def __enter__(self) -> "NullWriter":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _csv_line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _parse_cell(text: str) -> Any:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics_csv(path) -> list[dict]:
    """Rows of a metrics CSV; numbers parse as float, empty cells as nan,
    anything non-numeric stays a string."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse_cell(v or "") for k, v in row.items() if k is not None}
                for row in csv.DictReader(f)]


def read_metrics(run_dir) -> list[dict]:
    """Rows of ``run_dir/metrics.csv`` (see :func:`read_metrics_csv`)."""
    return read_metrics_csv(pathlib.Path(run_dir) / METRICS_FILE)


# --------------------------------------------------------------------------
# Checkpoints


def _checkpoint_paths(run_dir, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    folder = pathlib.Path(run_dir) / CHECKPOINT_DIR
    return folder / f"{name}.msgpack", folder / f"{name}.json"


def _json_default(obj: Any) -> Any:
    # Step counters often arrive as numpy/jax scalars.
    if isinstance(obj, np.generic):
        return obj.item()
    try:
        return np.asarray(obj).tolist()
    except Exception:
        raise TypeError(f"checkpoint meta value of type {type(obj).__name__} is not JSON-serialisable")


def save_checkpoint(run_dir, name: str, tree, meta: dict) -> pathlib.Path:
    """Save pytree ``tree`` to ``checkpoints/{name}.msgpack`` and ``meta`` to
    ``checkpoints/{name}.json``.

    The msgpack is replaced first and the JSON last; the JSON records the
    msgpack's sha256, so a crash between the two replaces is detected at load
    time as a mismatched pair instead of silently loading mixed state.
    """
    from flax import serialization

    msgpack_path, json_path = _checkpoint_paths(run_dir, name)
    payload = serialization.msgpack_serialize(serialization.to_state_dict(tree))
    sidecar = {
        "format": _CHECKPOINT_FORMAT,
        "msgpack_file": msgpack_path.name,
        "msgpack_sha256": hashlib.sha256(payload).hexdigest(),
        "meta": dict(meta),
    }
    sidecar_bytes = json.dumps(sidecar, indent=2, default=_json_default).encode("utf-8")
    _atomic_write_bytes(msgpack_path, payload)
    _atomic_write_bytes(json_path, sidecar_bytes)
    return msgpack_path


def checkpoint_exists(run_dir, name: str) -> bool:
    msgpack_path, json_path = _checkpoint_paths(run_dir, name)
    return msgpack_path.is_file() and json_path.is_file()


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the run's configuration."""


def load_checkpoint(run_dir, name: str, template):
    """Load ``(tree, meta)`` saved by :func:`save_checkpoint`.

    ``template`` supplies the pytree structure (e.g. freshly initialised
    params/state); leaves come back as numpy arrays in that structure.
    Raises ValueError if the pair is inconsistent or unreadable.
    """
    from flax import serialization

    msgpack_path, json_path = _checkpoint_paths(run_dir, name)
    for p in (msgpack_path, json_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint '{name}' is incomplete: missing {p}")
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON: {e}") from e
    expected = sidecar.get("msgpack_sha256") if isinstance(sidecar, dict) else None
    if not expected:
        raise CheckpointError(f"checkpoint metadata {json_path} has no msgpack_sha256; cannot verify {msgpack_path.name}")
    payload = msgpack_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"checkpoint '{name}' in {msgpack_path.parent} is corrupt or mismatched: "
            f"sha256 of {msgpack_path.name} is {actual[:12]}..., "
            f"{json_path.name} expects {expected[:12]}..."
        )
    try:
        restored = serialization.msgpack_restore(payload)
        tree = serialization.from_state_dict(template, restored)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{name}' does not match the run's configuration "
                              f"(saved by an older teamrl or edited config?): "
                              f"{str(e).splitlines()[0]}") from None
    return tree, sidecar.get("meta", {})
