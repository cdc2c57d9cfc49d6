"""The run folder: config, metrics, TensorBoard logs and checkpoints.

Layout of a run folder::

    config.yaml
    metrics.csv
    tb/seed_0/ ...            TensorBoard event files, one folder per seed
    checkpoints/latest.json + latest-<sha>.msgpack
    checkpoints/best.json   + best-<sha>.msgpack
    curve.png
    .lock                     held (flock) by the process training in the folder

Checkpoints are msgpack (via flax.serialization) plus a JSON sidecar, never
pickle, so loading one can never execute code. The sidecar names its msgpack
(by content hash) and is replaced last: that replace commits the pair, so a
kill at any instant leaves the old pair or the new one (older runs have
``latest.msgpack``; their sidecars name it and still load).
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


LOCK_FILE = ".lock"
# What train/eval write into a run folder (and experiments/experiment_runs.py's record):
# overwrite=true removes a folder only if it holds nothing else.
_RUN_ENTRIES = {CONFIG_FILE, METRICS_FILE, TB_DIR, CHECKPOINT_DIR, CURVE_FILE, LOCK_FILE,
                "experiment.json"}


class RunExistsError(ConfigError):
    """Raised when a run folder already holds results and overwrite is off."""


class RunBusyError(ConfigError):
    """Raised when another live process trains in the run folder."""


def fault(point: str) -> None:
    """Fault injection for tests: ``TEAMRL_FAULT=<point>[@<n>]`` ends the process with
    ``os._exit(9)`` (as a SIGKILL would, nothing flushed or cleaned) the n-th time (default 1)
    this process reaches ``point``. Points: ``checkpoint:msgpack`` (new msgpack written to its
    temp name), ``checkpoint:data`` (msgpack in place, sidecar not), ``checkpoint:sidecar``
    (new sidecar at its temp name), ``checkpoint:commit`` (sidecar replaced, old msgpack not
    yet removed), ``metrics:row`` (a chunk's rows written to metrics.csv)."""
    spec = os.environ.get("TEAMRL_FAULT")
    if not spec or spec.partition("@")[0] != point:
        return
    _FAULT_HITS[point] = _FAULT_HITS.get(point, 0) + 1
    if _FAULT_HITS[point] == int(spec.partition("@")[2] or 1):
        os._exit(9)


_FAULT_HITS: dict[str, int] = {}


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` while a process trains in the folder, the
    holder's pid written inside. The OS drops it when the process dies (kill -9 included), so
    a stale lock file never blocks anything."""

    def __init__(self, run_dir):
        self.path = pathlib.Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (the folder must exist); raise RunBusyError naming the holder."""
        if self._fd is not None:
            return self
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunBusyError(busy_message(self.path.parent, lock_holder(self.path.parent)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_holder(run_dir) -> int | str | None:
    """The pid of the live process holding ``run_dir``'s lock ("another process" if it has not
    written it yet), or None when no process holds it. Writes nothing."""
    import fcntl

    path = pathlib.Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else "another process"
        return None
    finally:
        os.close(fd)  # also drops the probe's shared lock


def busy_message(run_dir, holder) -> str:
    """The one-line refusal for a run folder in use by ``holder``."""
    who = f"process {holder}" if isinstance(holder, int) else str(holder)
    return (f"run folder '{run_dir}' is in use by {who} (training in it); wait for it to end "
            "or stop it first")


def is_run_folder(path) -> bool:
    """Whether ``path`` is a folder teamrl wrote (config.yaml, metrics.csv or checkpoints, and
    nothing but what train and eval write), i.e. one overwrite=true may remove."""
    path = pathlib.Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    if not names & {CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR}:
        return False
    for name in names:
        item = path / name
        if name.startswith(".") and name.endswith(".tmp"):
            continue  # an interrupted atomic write
        if name.startswith("eval_") and name.endswith(".json"):
            continue
        if name not in _RUN_ENTRIES or item.is_symlink():
            return False
        if (name in (TB_DIR, CHECKPOINT_DIR)) != item.is_dir():
            return False
    folders = [(path / CHECKPOINT_DIR, lambda n: n.endswith((".msgpack", ".json", ".tmp"))),
               (path / TB_DIR, lambda n: n.startswith("seed_"))]
    return all(all(ok(p.name) for p in folder.iterdir()) for folder, ok in folders
               if folder.is_dir())


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
    if occupied:
        if not is_run_folder(run_dir):
            kind = "folder" if run_dir.is_dir() else "file"
            raise RunExistsError(f"out='{run_dir}' is a {kind} that is not a teamrl run folder; "
                                 "overwrite=true replaces only run folders; choose another out=")
        holder = lock_holder(run_dir)
        if holder is not None:
            raise RunBusyError(busy_message(run_dir, holder))
    return occupied


def prepare_run_dir(path, overwrite: bool, lock: RunLock | None = None) -> pathlib.Path:
    """Create the run folder, refusing to clobber an earlier run, a live one or anything that is
    not a run folder; with ``lock``, take the folder's lock first.

    Checked before anything is written so that a refused run leaves the old
    folder untouched. Overwriting empties the folder but keeps its lock file, so the lock
    taken on it is never on a file another process could no longer see.
    """
    run_dir = pathlib.Path(path)
    occupied = run_dir.exists() and check_run_dir_free(run_dir, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.acquire()
    if occupied:
        for item in run_dir.iterdir():
            if item.name == LOCK_FILE:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
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


def _atomic_write_bytes(path: pathlib.Path, data: bytes, fault_point: str = "") -> None:
    """Write via a temp file in the same folder + os.replace.

    Readers see either the old file or the complete new one, never a torn
    write, even if the process is killed mid-save (see :func:`fault` for ``fault_point``).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault_point:
            fault(fault_point)
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

    def __init__(self, run_dir, resume: bool, keep_updates: int | None = None,
                 keep_steps: int | None = None):
        """``keep_updates`` (on resume): drop the rows logged after the checkpoint resumed
        from, which the resumed run logs again; ``keep_steps``: TensorBoard discards events
        past that env step (tensorboardX's ``purge_step``) for the same reason."""
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._header: list[str] | None = None
        self._tb_writers: dict[Any, Any] = {}
        self._purge_step = None if keep_steps is None else int(keep_steps) + 1

        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._drop_torn_tail()
            if keep_updates is not None:
                self._drop_rows_after(keep_updates)
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

    def _drop_rows_after(self, updates: int) -> None:
        # Rewritten atomically: a kill here leaves the old file, and the next resume drops
        # the same rows.
        with open(self.path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        header = next(csv.reader(lines[:1]), [])
        if "updates" not in header:
            return
        col = header.index("updates")
        kept = [line for line in lines[1:]
                if not _beyond(next(csv.reader([line]), []), col, updates)]
        if len(kept) < len(lines) - 1:
            _atomic_write_bytes(self.path, "".join(lines[:1] + kept).encode("utf-8"))

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

            writer = SummaryWriter(str(self.run_dir / TB_DIR / f"seed_{seed}"),
                                   purge_step=self._purge_step)
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


def _beyond(cells: list[str], col: int, updates: int) -> bool:
    """Whether a metrics row (its cells) was logged after update ``updates``."""
    try:
        return float(cells[col]) > updates
    except (IndexError, ValueError):
        return False


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
    """(msgpack, sidecar) of checkpoint ``name``: the msgpack its sidecar names (the old
    layout's ``{name}.msgpack`` when the sidecar names none or cannot be read)."""
    folder = pathlib.Path(run_dir) / CHECKPOINT_DIR
    json_path = folder / f"{name}.json"
    try:
        named = json.loads(json_path.read_text(encoding="utf-8")).get("msgpack_file")
    except (OSError, ValueError, AttributeError):
        named = None
    if not _plain_name(named):
        named = f"{name}.msgpack"
    return folder / named, json_path


def checkpoint_files(run_dir, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(msgpack, sidecar) paths of checkpoint ``name`` (the msgpack's name changes with every
    save; its sidecar ``checkpoints/{name}.json`` says which it is)."""
    return _checkpoint_paths(run_dir, name)


def _plain_name(name) -> bool:
    # A sidecar may only name a file next to it (an edited one could name '../../x').
    return isinstance(name, str) and name.endswith(".msgpack") and "/" not in name \
        and "\\" not in name and not name.startswith(".")


def _json_default(obj: Any) -> Any:
    # Step counters often arrive as numpy/jax scalars.
    if isinstance(obj, np.generic):
        return obj.item()
    try:
        return np.asarray(obj).tolist()
    except Exception:
        raise TypeError(f"checkpoint meta value of type {type(obj).__name__} is not JSON-serialisable")


def save_checkpoint(run_dir, name: str, tree, meta: dict) -> pathlib.Path:
    """Save pytree ``tree`` and ``meta`` as checkpoint ``name``, committed as one unit.

    The msgpack goes to a new file named by its hash (``{name}-<sha>.msgpack``), then the
    sidecar ``{name}.json`` naming it (and its sha256) replaces the old one: that replace is
    the commit, so a kill before it leaves the old pair intact and one after it the new one.
    The superseded msgpack is removed last (or by :func:`clean_checkpoints` on the next start).
    """
    from flax import serialization

    folder = pathlib.Path(run_dir) / CHECKPOINT_DIR
    old_msgpack, json_path = _checkpoint_paths(run_dir, name)
    payload = serialization.msgpack_serialize(serialization.to_state_dict(tree))
    digest = hashlib.sha256(payload).hexdigest()
    msgpack_path = folder / f"{name}-{digest[:16]}.msgpack"
    sidecar = {
        "format": _CHECKPOINT_FORMAT,
        "msgpack_file": msgpack_path.name,
        "msgpack_sha256": digest,
        "meta": dict(meta),
    }
    sidecar_bytes = json.dumps(sidecar, indent=2, default=_json_default).encode("utf-8")
    _atomic_write_bytes(msgpack_path, payload, "checkpoint:msgpack")
    fault("checkpoint:data")
    _atomic_write_bytes(json_path, sidecar_bytes, "checkpoint:sidecar")
    fault("checkpoint:commit")
    if old_msgpack != msgpack_path:
        old_msgpack.unlink(missing_ok=True)
    return msgpack_path


def clean_checkpoints(run_dir) -> None:
    """Remove what interrupted writes left in ``run_dir``: temp files, and msgpacks no sidecar
    names any more. Call only while holding the run's lock (a live writer's temp files would
    go). Msgpacks of a checkpoint whose sidecar cannot be read are kept."""
    run_dir = pathlib.Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR
    for tmp in [*run_dir.glob(".*.tmp"), *folder.glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)
    for json_path in folder.glob("*.json"):
        name = json_path.stem
        try:
            named = json.loads(json_path.read_text(encoding="utf-8"))["msgpack_file"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for data in [*folder.glob(f"{name}-*.msgpack"), folder / f"{name}.msgpack"]:
            if data.name != named and data.is_file():
                data.unlink()


def checkpoint_exists(run_dir, name: str) -> bool:
    """Whether checkpoint ``name`` has both its files (not whether they are valid)."""
    msgpack_path, json_path = _checkpoint_paths(run_dir, name)
    return msgpack_path.is_file() and json_path.is_file()


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the run's configuration."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that does not fit the run's config.yaml (another checkpoint of the
    same run would not fit either, so there is no fallback)."""


def read_checkpoint(run_dir, name: str) -> tuple[bytes, dict]:
    """(msgpack payload, meta) of checkpoint ``name``, its sha256 verified against the
    sidecar. Raises CheckpointError (one line) if either file is missing or they disagree."""
    msgpack_path, json_path = _checkpoint_paths(run_dir, name)
    if not json_path.is_file():
        raise CheckpointError(f"checkpoint '{name}' is incomplete: missing {json_path}")
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON: {e}") from e
    expected = sidecar.get("msgpack_sha256") if isinstance(sidecar, dict) else None
    if not expected:
        raise CheckpointError(f"checkpoint metadata {json_path} has no msgpack_sha256; cannot verify {msgpack_path.name}")
    if not msgpack_path.is_file():
        raise CheckpointError(f"checkpoint '{name}' is incomplete: missing {msgpack_path}")
    payload = msgpack_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"checkpoint '{name}' in {msgpack_path.parent} is corrupt or mismatched: "
            f"sha256 of {msgpack_path.name} is {actual[:12]}..., "
            f"{json_path.name} expects {str(expected)[:12]}..."
        )
    meta = sidecar.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {json_path}: 'meta' is not a mapping")
    return payload, meta


def load_checkpoint(run_dir, name: str, template, check=None):
    """Load ``(tree, meta)`` saved by :func:`save_checkpoint`.

    ``template`` supplies the pytree structure (e.g. freshly initialised
    params/state); leaves come back as numpy arrays in that structure.
    ``check(meta)``, if given, vets the meta before the tree is restored (raising
    CheckpointError). Raises CheckpointError if the pair is inconsistent or unreadable.
    """
    from flax import serialization

    payload, meta = read_checkpoint(run_dir, name)
    if check is not None:
        check(name, meta)
    try:
        restored = serialization.msgpack_restore(payload)
        tree = serialization.from_state_dict(template, restored)
    except Exception as e:
        raise CheckpointMismatch(f"checkpoint '{name}' does not match the run's configuration "
                                 f"(saved by an older teamrl or edited config?): "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return tree, meta


def load_with_fallback(run_dir, template, order=("latest", "best"), check=None,
                       what_to_do: str = "", note=None):
    """``(name, tree, meta)`` of the first usable checkpoint of ``order``. A missing or broken
    one is passed over with a one-line ``note``; one that does not fit the config
    (CheckpointMismatch) stops here, since the others are of the same run. When none is
    usable, raises CheckpointError saying why and ``what_to_do``."""
    problems = []
    for name in order:
        try:
            tree, meta = load_checkpoint(run_dir, name, template, check)
        except CheckpointMismatch:
            raise
        except CheckpointError as err:
            problems.append((name, str(err)))
            continue
        if problems and note is not None:
            skipped = "; ".join(f"'{n}' is unusable ({why})" for n, why in problems)
            note(f"teamrl: note: checkpoint {skipped}; using '{name}' "
                 f"(update {meta.get('updates', '?')}) instead")
        return name, tree, meta
    missing = all("is incomplete: missing" in why for _, why in problems)
    if missing:
        raise CheckpointError(f"'{run_dir}' has no checkpoint ({', '.join(order)}); {what_to_do}")
    raise CheckpointError(f"no usable checkpoint in '{run_dir}': "
                          + "; ".join(why for _, why in problems) + f"; {what_to_do}")


def config_record(config_dict: dict) -> dict:
    """The config keys that shape or drive training, flat ``section.key`` -> value as JSON
    stores it: recorded in checkpoints and compared on load. Leaves out what resume may change
    and what does not touch the parameters (out, progress, logging, placement)."""
    drop = {"out", "overwrite", "progress", "total_steps", "log_every", "checkpoint_every",
            "eval_every", "eval_episodes", "devices", "coordinator", "num_processes",
            "process_id", "distributed_timeout", "host_overlap"}
    flat = {f"{sec}.{k}": v for sec, values in config_dict.items()
            for k, v in (values or {}).items() if not (sec == "run" and k in drop)}
    return json.loads(json.dumps(flat, default=str))


def config_mismatch(saved: dict, current: dict) -> str | None:
    """The first key (algorithm, env, network first) whose value differs between a checkpoint's
    :func:`config_record` and the current one, as 'key: A saved, B now'; None if they agree.
    Keys only one side has (teamrl versions adding keys) do not count."""
    order = lambda k: (k not in ("run.algo", "run.env_id"), not k.startswith("network."),
                       not k.startswith("env."), k)
    for key in sorted(set(saved) & set(current), key=order):
        if saved[key] != current[key]:
            return f"{key}={saved[key]!r} in the checkpoint, {current[key]!r} in config.yaml"
    return None


def config_sha256(record: dict) -> str:
    """Fingerprint of a :func:`config_record`."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
