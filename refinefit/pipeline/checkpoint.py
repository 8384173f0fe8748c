"""Chunk results committed beside the output, so that a killed run resumes.

``OUT.parts/`` holds ``manifest.json`` (a fingerprint of the movie, the
features and the options, and the number of chunks), a ``lock`` file held
while a run writes there, and ``chunk-NNNNNN.npz``, one per refined chunk.
Each file is written under a temporary name, flushed to disk and renamed,
so a chunk file that exists is complete, even after SIGKILL. A run whose
fingerprint differs from the manifest's discards the chunk files first.

A chunk file holds the rows of the features it refined (positions in the
input table), the number of clusters it found, the output's column names and
the values of every column with a NumPy dtype. Other columns (strings,
categories) are input columns ``refine_leastsq`` does not touch; they are
taken from the input when the chunks are assembled.
"""
import hashlib
import json
import numbers
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.tables import StreamUnsupported, flush_and_rename
from ..status import count_status

FORMAT = 1
_MANIFEST = "manifest.json"
_LISTED_ELEMENTS = 64  # larger arrays among the options: stored as a digest
_LOCK = "lock"

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None


class Busy(RuntimeError):
    """Another run holds the lock on the same output."""


def parts_folder(out):
    """The folder of chunk files beside ``out``."""
    return Path(str(out) + ".parts")


def pack_chunk(rows, refined):
    """Arrays that describe one refined chunk (see the module notes)."""
    packed = dict(rows=np.asarray(rows, dtype=np.int64),
                  n_clusters=np.int64(refined["cluster"].max() + 1
                                      if len(refined) else 0),
                  columns=np.array([str(c) for c in refined.columns]))
    for i, name in enumerate(refined.columns):
        dtype = refined[name].dtype
        if isinstance(dtype, np.dtype) and dtype.kind != "O":
            packed[f"column_{i}"] = refined[name].to_numpy()
    return packed


def assemble(features, packs):
    """The refined table, rows in the order of ``features``, from the packed
    chunks in chunk (frame) order.

    Cluster labels are numbered per ``refine_leastsq`` call from 0; each
    chunk's labels are offset by the clusters of the chunks before it, which
    gives the labels of one call over the whole table (clusters never span
    frames, and labels follow frame order).
    """
    blocks, first_cluster = [], 0
    for packed in packs:
        blocks.append(chunk_rows(features, packed, first_cluster))
        first_cluster += int(packed["n_clusters"])
    rows = np.concatenate([packed["rows"] for packed in packs])
    table = pd.concat(blocks) if len(blocks) > 1 else blocks[0]
    return table.iloc[np.argsort(rows, kind="stable")]


def chunk_rows(features, packed, first_cluster):
    """The refined rows of one chunk, in the order of ``features``, from
    its packed arrays; its cluster labels start at ``first_cluster``.
    Columns the chunk file lacks (not NumPy dtypes) are input columns that
    ``refine_leastsq`` does not change: they come from ``features``."""
    rows = packed["rows"]
    names = [str(c) for c in packed["columns"]]
    by_name = {str(c): c for c in features.columns}
    kept = [name for i, name in enumerate(names)
            if f"column_{i}" not in packed]
    missing = [name for name in kept if name not in by_name]
    if missing:
        raise ValueError(f"chunk files lack the values of column(s) "
                         f"{missing}")
    part = features[[by_name[name] for name in kept]].iloc[rows]
    data = {}
    for i, name in enumerate(names):
        key = by_name.get(name, name)
        values = packed.get(f"column_{i}")
        if values is None:
            data[key] = part[key].array  # its dtype, no index alignment
        else:
            data[key] = values + first_cluster if name == "cluster" \
                else values
    return pd.DataFrame(data, index=features.index[rows])


def packed_columns(packed, first_cluster):
    """The refined columns of one chunk (name to values, in the output's
    order) when its file holds them all, else None; its cluster labels
    start at ``first_cluster``."""
    names = [str(c) for c in packed["columns"]]
    if any(f"column_{i}" not in packed for i in range(len(names))):
        return None
    return {name: packed[f"column_{i}"] + first_cluster
            if name == "cluster" else packed[f"column_{i}"]
            for i, name in enumerate(names)}


class OrderedOutput:
    """Writes refined chunks to a :class:`refinefit.io.tables.TableStream`
    in chunk order: chunks that arrive early wait, and chunks resumed from
    an earlier run are read from ``store`` when their turn comes. If the
    stream refuses a chunk (``StreamUnsupported``), it is deleted and the
    rest is ignored (``failed_stream``)."""

    def __init__(self, stream, table, n_chunks, store, done):
        self.stream = stream
        self.table = table
        self.n_chunks = n_chunks
        self.store = store
        self.done = done
        self.waiting = {}
        self.next = 0
        self.clusters = 0
        self.status_counts = count_status([])
        self.failed_stream = False
        # chunks whose files hold every column go as NumPy columns, named
        # as in the file: only where the input's names are those strings
        self.as_arrays = stream.takes_arrays and all(
            isinstance(name, str) for name in table.columns)

    def add(self, k, packed):
        if not self.failed_stream:
            self.waiting[k] = packed
            self._drain()

    def finish(self):
        """Write the chunks resumed after the last refined one; rename the
        stream to its final name."""
        self._drain()
        if not self.failed_stream:
            self.stream.finish()

    def abort(self):
        self.failed_stream = True
        self.waiting.clear()
        self.stream.abort()

    def _drain(self):
        """Write the chunks whose turn has come."""
        if self.failed_stream:
            return
        try:
            while self.next < self.n_chunks:
                if self.next in self.waiting:
                    packed = self.waiting.pop(self.next)
                elif self.next in self.done:
                    packed = self.store.load(self.next)
                else:
                    break
                columns = packed_columns(packed, self.clusters) \
                    if self.as_arrays else None
                if columns is not None:
                    self.stream.write_arrays(columns)
                    status = columns["status"]
                else:
                    rows = chunk_rows(self.table, packed, self.clusters)
                    self.stream.write(rows)
                    status = rows["status"].to_numpy()
                self.clusters += int(packed["n_clusters"])
                self.status_counts = self.status_counts + count_status(status)
                self.next += 1
        except StreamUnsupported:
            self.abort()


class PartStore:
    """The chunk files of one output.

    Parameters
    ----------
    out : str or Path
        The final output; chunk files go to ``OUT.parts/``.
    fingerprint : dict or None
        What the results depend on. None: the inputs cannot be identified
        (an unnamed reader), so nothing is resumed.
    n_chunks : int
        Number of chunks in the plan.
    limits : (int, int), optional
        The default chunk limits (frames, features) the plan used, kept in
        the manifest so that a run with another thread count can resume
        with the same plan.
    """

    def __init__(self, out, fingerprint, n_chunks, limits=None):
        self.out = Path(out)
        self.folder = parts_folder(out)
        self.n_chunks = int(n_chunks)
        self.manifest = as_stored(dict(
            format=FORMAT, fingerprint=fingerprint, n_chunks=self.n_chunks,
            limits=None if limits is None else [int(n) for n in limits]))
        self.discarded = 0
        self._lock_handle = None

    def open(self):
        """Lock the folder and return the chunk numbers already committed.

        Chunk files from a run with another fingerprint are deleted first
        (their number is left in ``discarded``).
        """
        self.folder.mkdir(exist_ok=True)
        self._lock()
        manifest_path = self.folder / _MANIFEST
        try:
            previous = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            previous = None
        fresh = (self.manifest["fingerprint"] is None
                 or previous != self.manifest)
        for entry in self.folder.iterdir():
            if entry.name == _LOCK:
                continue
            if fresh or entry.name.startswith("."):
                self.discarded += entry.name.startswith("chunk-")
                _remove(entry)
        if fresh:
            _write_atomically(manifest_path, json.dumps(
                self.manifest, indent=1).encode())
        return {k for k in range(self.n_chunks) if self._path(k).exists()}

    def commit(self, chunk, packed):
        """Write one chunk's packed arrays durably under its final name."""
        temporary = self.folder / f".chunk-{chunk:06d}.tmp"
        with open(temporary, "wb") as handle:
            np.savez(handle, **packed)
        flush_and_rename(temporary, self._path(chunk))

    def load(self, chunk):
        """Packed arrays of a committed chunk."""
        with np.load(self._path(chunk), allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

    def remove(self):
        """Delete the folder (after the output is in place), then release
        the lock."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._unlock()

    def close(self):
        """Release the lock, keeping the chunk files for a later run."""
        self._unlock()

    def _path(self, chunk):
        return self.folder / f"chunk-{chunk:06d}.npz"

    def _lock(self):
        if fcntl is None:
            return
        handle = open(self.folder / _LOCK, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise Busy(f"another run is writing {str(self.folder)!r}; wait "
                       "for it to finish") from None
        self._lock_handle = handle

    def _unlock(self):
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing releases the flock
            self._lock_handle = None


def read_manifest(out):
    """The manifest of the chunk files beside ``out``, or None."""
    try:
        return json.loads((parts_folder(out) / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def as_stored(value):
    """``value`` as the manifest stores it (through JSON)."""
    return json.loads(json.dumps(value))


def fingerprint(movie_identity, features_identity, options):
    """What a run's results depend on, or None if a part is unknown."""
    if movie_identity is None or features_identity is None:
        return None
    return dict(movie=movie_identity, features=features_identity,
                options=canonical(options))


def table_identity(table, path=None):
    """A file's path, size and mtime; for an in-memory table a hash of its
    index, values, column names and dtypes (None if not hashable)."""
    if path is not None:
        stat = os.stat(path)
        return dict(path=os.path.realpath(path), size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns)
    try:
        row_hashes = pd.util.hash_pandas_object(table, index=True).to_numpy()
    except TypeError:  # unhashable cells (lists, dicts)
        return None
    digest = hashlib.blake2b(row_hashes.tobytes(), digest_size=16)
    return dict(rows=len(table), columns=[str(c) for c in table.columns],
                dtypes=[str(t) for t in table.dtypes],
                blake2b=digest.hexdigest())


def canonical(value):
    """A JSON-able form of an option value that equals across processes
    exactly when the value does (functions by module, name and bytecode;
    objects without a stable form by ``repr``, which at worst makes a run
    start afresh)."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in
                sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, np.ndarray) and value.size > _LISTED_ELEMENTS:
        # (a camera's map: its digest, not a frame's worth of JSON)
        data = np.ascontiguousarray(value)
        digest = hashlib.blake2b(data.tobytes(), digest_size=16)
        return dict(shape=list(value.shape), dtype=value.dtype.str,
                    blake2b=digest.hexdigest())
    if isinstance(value, np.ndarray):
        return dict(array=canonical(value.tolist()), dtype=value.dtype.str)
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (str, bool, np.bool_)):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if np.isfinite(value) else repr(value)
    code = getattr(value, "__code__", None)
    if code is not None:
        body = hashlib.blake2b(code.co_code + repr(code.co_consts).encode(),
                               digest_size=8).hexdigest()
        cells = [canonical(c.cell_contents) for c in value.__closure__ or ()]
        return dict(function=f"{value.__module__}.{value.__qualname__}",
                    code=body, closure=cells)
    return repr(value)


def _write_atomically(path, data):
    temporary = path.with_name("." + path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    flush_and_rename(temporary, path)


def _remove(entry):
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
