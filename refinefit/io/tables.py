"""Feature tables on disk: CSV, Parquet and HDF5 in, CSV and Parquet out.

Formats are chosen by the file's extension. Parquet needs pyarrow
(``pip install 'refinefit[parquet]'``); HDF5 needs PyTables
(``pip install tables``). Both are optional and named in the error when
missing.
"""
import bz2
import fnmatch
import glob
import gzip
import lzma
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config

_CSV = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst")
_PARQUET = (".parquet", ".pq")
_HDF5 = (".h5", ".hdf5", ".hdf")
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
# trackpy.PandasHDFStore keeps one table per frame under these keys
_TRACKPY_FRAME_KEY = "/Frame_"


def table_format(path, purpose):
    """'csv', 'parquet' or 'hdf5' from the extension of ``path``.

    ``purpose`` is 'features' (read) or 'output' (written; no HDF5).
    Raises ValueError for another extension and ImportError when the
    library the format needs is missing.
    """
    name = Path(path).name.lower()
    formats = [("csv", _CSV), ("parquet", _PARQUET)]
    if purpose == "features":
        formats.append(("hdf5", _HDF5))
    for kind, suffixes in formats:
        if name.endswith(suffixes):
            _require(kind, purpose)
            return kind
    known = ", ".join(s for _, suffixes in formats for s in suffixes)
    raise ValueError(f"{purpose} file {str(path)!r}: unknown extension; use "
                     f"one of {known}")


def read_features(path):
    """Read a features table written by pandas or trackpy.

    Parameters
    ----------
    path : str or Path
        ``.csv`` (optionally compressed), ``.parquet``/``.pq``, or
        ``.h5``/``.hdf5``/``.hdf``. A CSV whose first header cell is empty
        (``DataFrame.to_csv`` with its index) gets that column as index. An
        HDF5 file holds one table, or one per frame as
        ``trackpy.PandasHDFStore`` writes them (concatenated in frame order).

    Returns
    -------
    DataFrame
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file {str(path)!r} does not exist"
                                if not path.exists() else
                                f"features file {str(path)!r} is not a file")
    kind = table_format(path, "features")
    try:
        if kind == "csv":
            return pd.read_csv(path, index_col=_csv_index_col(path))
        if kind == "parquet":
            return pd.read_parquet(path)
        return _read_hdf(path)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as exc:  # a parser error: say which file and why
        raise _unreadable(path, exc) from exc


def has_index_column(path):
    """Whether the features file ``path`` stores an index: a CSV whose first
    header cell is empty, a Parquet file with a stored index. The output
    then keeps one, so that it reads back as the input was read."""
    try:
        kind = table_format(Path(path), "features")
        if kind == "csv":
            return _csv_index_col(path) == 0
        if kind == "parquet":
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).pandas_metadata or {}
            return any(not isinstance(index, dict)
                       for index in metadata.get("index_columns", []))
    except Exception:  # unreadable: read_features says why, elsewhere
        return False
    return False


def check_return_table(return_table, out, what):
    """``return_table`` must be a bool, and False only with an ``out`` for
    ``what`` (the table that would otherwise go nowhere)."""
    if not isinstance(return_table, bool):
        raise TypeError(f"return_table must be True or False, got "
                        f"{return_table!r}")
    if not return_table and out is None:
        raise ValueError(f"return_table=False needs out: {what} would go "
                         "nowhere")


def check_not_an_input(out, inputs):
    """ValueError when the output ``out`` is one of the ``inputs`` (paths,
    globs of paths): the same path, the same file by another name, or a
    name the glob matches (the next run would read it as a frame)."""
    out = Path(out)
    for name, given in inputs.items():
        if not isinstance(given, (str, os.PathLike)):
            continue
        pattern = any(c in str(given) for c in "*?[")
        if pattern and _glob_matches(out, given):
            raise ValueError(f"output {str(out)!r} is matched by the {name} "
                             f"{str(given)!r}: the movie would take it for "
                             "a frame; choose another output path")
        paths = [Path(given)] + ([Path(p) for p in glob.glob(str(given))]
                                 if pattern else [])
        for path in paths:
            same = os.path.abspath(path) == os.path.abspath(out) or (
                out.exists() and path.exists() and os.path.samefile(path, out))
            if same:
                raise ValueError(f"output {str(out)!r} is the {name} "
                                 f"{str(path)!r}: it would be overwritten; "
                                 "choose another output path")


def _glob_matches(path, pattern):
    """Whether ``glob.glob(pattern)`` would list ``path`` were it there:
    the same number of path parts, each matching (``*`` stays within one
    folder)."""
    parts = Path(os.path.abspath(path)).parts
    wanted = Path(os.path.abspath(pattern)).parts
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted))


def _unreadable(path, exc):
    """The error for a features file the parser failed on."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ValueError(f"cannot read features file {str(path)!r}: {first}")


def open_streamed_features(path):
    """A features file to read a range of rows at a time
    (:class:`ParquetFeatures` or :class:`CsvFeatures`), or None when it
    is to be read whole (:func:`read_features`, which also names any
    problem with the file)."""
    return ParquetFeatures.open(path) or CsvFeatures.open(path)


class StreamedFeatures:
    """A features file read a range of rows at a time, in order, so that
    only a block of it is in memory (``refine_movie`` streaming). Every
    range reads as the same rows, types and index as the whole file would,
    and a parser error is the ValueError :func:`read_features` raises.

    Attributes
    ----------
    head : DataFrame
        No rows; the file's columns and their types.
    n_rows : int
    """

    def __init__(self, path, head, n_rows):
        self.path = Path(path)
        self.head = head
        self.n_rows = int(n_rows)
        self._blocks = None  # iterator of the file's blocks of rows
        self._buffer = []  # blocks from row self._start on
        self._start = 0

    def column_batches(self, name, batch_size=2 ** 20):
        """The values of column ``name`` (in ``head``), as NumPy arrays of
        ``batch_size`` rows at a time."""
        batches = self._column_batches(name, batch_size)
        while True:
            try:
                values = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - as read_features
                raise _unreadable(self.path, exc) from exc
            yield values

    def rows(self, lo, hi):
        """Rows ``lo`` to ``hi - 1`` with their index; ranges are read in
        increasing order (``lo`` at or after the last call's ``hi``)."""
        if lo < self._start or hi > self.n_rows or hi < lo:
            raise ValueError(f"rows {lo}:{hi} are not ahead of row "
                             f"{self._start} in a file of {self.n_rows}")
        if self._blocks is None:
            self._blocks = self._read_blocks()
        buffered = sum(len(block) for block in self._buffer)
        try:
            while self._start + buffered < hi:
                block = next(self._blocks)
                self._buffer.append(block)
                buffered += len(block)
            table = self._take(self._buffer, lo - self._start, hi - lo)
        except Exception as exc:  # noqa: BLE001 - as read_features
            raise _unreadable(self.path, exc) from exc
        table.index = pd.RangeIndex(lo, hi)
        while self._buffer and self._start + len(self._buffer[0]) <= hi:
            self._start += len(self._buffer.pop(0))  # read past
        return table

    def close(self):
        if self._blocks is not None:
            self._blocks.close()  # the generator closes its reader
        self._buffer = []
        self._blocks = None

    def _column_batches(self, name, batch_size):
        raise NotImplementedError

    def _read_blocks(self):
        """Generator of the file's rows, a block of about
        ``config.current().tables.read_batch`` rows at a time."""
        raise NotImplementedError

    def _take(self, blocks, offset, n):
        """Rows ``offset`` to ``offset + n - 1`` of ``blocks``, as a
        DataFrame."""
        raise NotImplementedError


class ParquetFeatures(StreamedFeatures):
    """A Parquet file as :class:`StreamedFeatures`.

    :meth:`open` accepts only files with columns of NumPy integer,
    unsigned, bool or float types (integers and bools without nulls, by
    the row groups' statistics: a null would make the whole column float)
    and the default index 0..n-1.
    """

    def __init__(self, path, file, head):
        super().__init__(path, head, file.metadata.num_rows)
        self._file = file

    @classmethod
    def open(cls, path):
        """The file as a :class:`ParquetFeatures`, or None."""
        path = Path(path)
        if not path.is_file() or not path.name.lower().endswith(_PARQUET):
            return None
        try:
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
        except Exception:  # noqa: BLE001 - read_features reports it
            return None
        try:
            head = file.schema_arrow.empty_table().to_pandas()
            if _ranges_read_as_whole(file, head):
                return cls(path, file, head)
        except Exception:  # noqa: BLE001 - read_features reports it
            pass
        file.close()
        return None

    def _column_batches(self, name, batch_size):
        position = list(self.head.columns).index(name)
        for batch in self._file.iter_batches(
                batch_size=batch_size, use_threads=False,
                columns=[self._file.schema_arrow.names[position]]):
            yield batch.column(0).to_numpy(zero_copy_only=False)

    def close(self):
        super().close()
        self._file.close()  # closing again does nothing

    def _read_blocks(self):
        yield from self._file.iter_batches(batch_size=_tables().read_batch,
                                           use_threads=False)

    def _take(self, blocks, offset, n):
        import pyarrow as pa

        return pa.Table.from_batches(blocks, self._file.schema_arrow).slice(
            offset, n).to_pandas()


class CsvFeatures(StreamedFeatures):
    """A CSV file (plain, gzip, bz2 or xz) of at least
    ``config.current().tables.csv_stream_bytes`` as
    :class:`StreamedFeatures`; smaller files are read whole, which is faster
    (this reads the file three times: to learn its types, its frame
    column, and its rows).

    :meth:`open` accepts only files whose every column reads, block by
    block, as int64, float64 (a column of both reads as float64, as in the
    whole file) or bool, and whose index, when written, is 0..n-1. Each
    block is then read with the types of the whole file.
    """

    def __init__(self, path, index_col, dtypes, head, n_rows):
        super().__init__(path, head, n_rows)
        self._index_col = index_col
        self._dtypes = dtypes

    @classmethod
    def open(cls, path):
        """The file as a :class:`CsvFeatures`, or None."""
        path = Path(path)
        name = path.name.lower()
        if not path.is_file() or not name.endswith(_CSV) or \
                name.endswith(".csv.zst") or \
                path.stat().st_size < _tables().csv_stream_bytes:
            return None
        try:
            return cls._learn(path)
        except Exception:  # noqa: BLE001 - read_features reports it
            return None

    @classmethod
    def _learn(cls, path):
        """Read the file once, a block at a time, for the types of its
        columns; None unless it qualifies."""
        index_col = _csv_index_col(path)
        seen, n_rows, head = {}, 0, None
        with pd.read_csv(path, index_col=index_col,
                         chunksize=_tables().read_batch * 4) as reader:
            for block in reader:
                # an index other than 0..n-1: written, or the first field
                # of rows one field longer than the header
                if not np.array_equal(block.index, np.arange(
                        n_rows, n_rows + len(block))):
                    return None
                for column, dtype in block.dtypes.items():
                    seen.setdefault(column, set()).add(dtype)
                head = block.iloc[:0] if head is None else head
                n_rows += len(block)
        if head is None or not head.columns.is_unique:
            return None
        dtypes = {}
        boolean, integer, real = (np.dtype(bool), np.dtype(np.int64),
                                  np.dtype(np.float64))
        for column, kinds in seen.items():
            if kinds <= {boolean}:
                dtypes[column] = boolean
            elif kinds <= {integer}:
                dtypes[column] = integer
            elif kinds <= {integer, real}:
                dtypes[column] = real
            else:
                return None
        head = head.astype(dtypes).reset_index(drop=True)
        return cls(path, index_col, dtypes, head, n_rows)

    def _column_batches(self, name, batch_size):
        with pd.read_csv(self.path, usecols=[name],
                         dtype={name: self._dtypes[name]},
                         chunksize=batch_size) as reader:
            for block in reader:
                yield block[name].to_numpy()

    def _read_blocks(self):
        with pd.read_csv(self.path, index_col=self._index_col,
                         dtype=self._dtypes, chunksize=_tables().read_batch) as reader:
            yield from reader

    def _take(self, blocks, offset, n):
        table = pd.concat(blocks) if len(blocks) > 1 else blocks[0]
        return table.iloc[offset:offset + n].copy()


def _ranges_read_as_whole(file, head):
    """Whether any range of rows of Parquet ``file`` reads as those rows of
    the whole file would: see :class:`ParquetFeatures`."""
    metadata = file.schema_arrow.pandas_metadata or {}
    index = metadata.get("index_columns", [])
    default_index = index == [] or (
        len(index) == 1 and isinstance(index[0], dict)
        and index[0].get("kind") == "range" and index[0].get("start") == 0
        and index[0].get("step") == 1)
    if not default_index or isinstance(head.columns, pd.MultiIndex) or \
            not head.columns.is_unique or \
            not all(isinstance(dtype, np.dtype) for dtype in head.dtypes):
        return False
    kinds = [dtype.kind for dtype in head.dtypes]
    if any(kind not in "biuf" for kind in kinds):
        return False
    # flat columns, no stored index: Parquet column j is head's column j
    if not len(file.schema_arrow.names) == file.metadata.num_columns \
            == len(kinds):
        return False
    for j, kind in enumerate(kinds):
        if kind == "f":
            continue
        for group in range(file.metadata.num_row_groups):
            stats = file.metadata.row_group(group).column(j).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return False
    return True


def _csv_index_col(path):
    """0 when the first header cell is empty (``DataFrame.to_csv`` wrote
    the index there), else None."""
    header = pd.read_csv(path, nrows=0)
    return 0 if len(header.columns) and \
        str(header.columns[0]).startswith("Unnamed: 0") else None


def _read_hdf(path):
    with pd.HDFStore(path, mode="r") as store:
        keys = store.keys()
        if len(keys) == 1:
            return store[keys[0]]
        if keys and all(k.startswith(_TRACKPY_FRAME_KEY) for k in keys):
            keys.sort(key=lambda k: int(k[len(_TRACKPY_FRAME_KEY):]))
            return pd.concat([store[k] for k in keys], ignore_index=True)
    raise ValueError(f"expected one table, found keys {keys}")


def write_table(table, path, kind, final_name=None, keep_index=None):
    """Write ``table`` to ``path`` as ``kind`` ('csv' or 'parquet').

    The index is written with ``keep_index``, by default only when it is not
    the default 0..n-1 range, so a table read from a file round-trips with
    its columns only. CSV compression follows the extension of
    ``final_name`` (default ``path``).
    """
    if keep_index is None:
        keep_index = writes_index(table)
    if kind == "parquet":
        table.to_parquet(path, index=keep_index,
                         use_dictionary=_dictionary_columns(table))
    else:
        table.to_csv(path, index=keep_index,
                     compression=_compression(final_name or path))


def writes_index(table):
    """Whether a written table carries its index: only when it is not the
    default 0..n-1 range."""
    return not table.index.equals(pd.RangeIndex(len(table)))


def _dictionary_columns(table):
    """Columns worth a Parquet dictionary: not floating-point ones, whose
    values rarely repeat (a dictionary for them is work thrown away, and a
    larger file)."""
    return [str(name) for name, dtype in table.dtypes.items()
            if getattr(dtype, "kind", "O") != "f"]


class TableStream:
    """Write a table block by block under a temporary name beside ``path``;
    :meth:`finish` flushes it to disk and renames it to ``path``.

    For the blocks put together, and ``keep_index`` as
    :func:`writes_index` decides for that table, a CSV file equals what
    :func:`write_table_atomically` writes, byte for byte; a Parquet file
    holds the same rows, columns and types (in row groups of at least
    ``config.current().tables.row_group`` rows, gathered from the
    blocks). Raises
    :class:`StreamUnsupported` when a block cannot join the file (Parquet:
    its columns convert to other types than the first block's, say an
    object column of strings, then of numbers).
    """


    def __init__(self, path, kind, keep_index):
        if not streamable(path, kind):
            raise StreamUnsupported(f"cannot stream {str(path)!r}")
        self.path = Path(path)
        self.kind = kind
        self.keep_index = keep_index
        self.temporary = _temporary_name(self.path)
        self._writer = None
        self._schema = None
        self._dictionary = None
        self._pending = []
        self._pending_rows = 0

    def write(self, block):
        if self.kind == "csv":
            if self._writer is None:
                self._writer = _OPENERS[_compression(self.path)](
                    self.temporary, "wt", newline="", encoding="utf-8")
                block.to_csv(self._writer, index=self.keep_index)
            else:
                block.to_csv(self._writer, index=self.keep_index,
                             header=False)
            return
        import pyarrow as pa

        try:
            table = pa.Table.from_pandas(block, preserve_index=self.keep_index,
                                         nthreads=1)  # no pool per block
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise StreamUnsupported(str(exc)) from exc
        if self._schema is None:
            self._schema = table.schema
            self._dictionary = _dictionary_columns(block)
        elif not table.schema.equals(self._schema, check_metadata=False):
            raise StreamUnsupported("a block's columns convert to other "
                                    "Parquet types than the first block's")
        self._append(table.replace_schema_metadata(self._schema.metadata))

    @property
    def takes_arrays(self):
        """Whether :meth:`write_arrays` may be used: Parquet without an
        index."""
        return self.kind == "parquet" and not self.keep_index

    def write_arrays(self, columns):
        """Write a block given as NumPy columns (a dict, name to values),
        as :meth:`write` writes a DataFrame of them, without building one
        after the first block (pandas' conversion costs more than the
        write of a small chunk)."""
        import pyarrow as pa

        if not self.takes_arrays:
            raise ValueError("write_arrays needs Parquet without an index")
        if self._schema is not None and list(columns) == self._schema.names:
            try:  # NaN as null, as from_pandas does
                arrays = [pa.array(values, from_pandas=True)
                          for values in columns.values()]
            except (pa.ArrowException, ValueError, TypeError):
                arrays = None  # write() says why it does not join the file
            # from_arrays would cast to the schema's types: compare first
            if arrays is not None and all(
                    array.type == field.type
                    for array, field in zip(arrays, self._schema)):
                self._append(pa.Table.from_arrays(arrays,
                                                  schema=self._schema))
                return
        self.write(pd.DataFrame(columns, copy=False))

    def _append(self, table):
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= _tables().row_group:
            self._flush()

    def finish(self):
        """Close the file, flush it to disk and rename it to ``path``."""
        if self.kind == "parquet":
            self._flush()
        if self._writer is None:
            raise ValueError("no rows were written")
        self._writer.close()
        flush_and_rename(self.temporary, self.path)

    def abort(self):
        """Close and delete the temporary file."""
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        self.temporary.unlink(missing_ok=True)

    def _flush(self):
        if not self._pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.temporary, table.schema,
                                            use_dictionary=self._dictionary)
        self._writer.write_table(table)


class StreamUnsupported(Exception):
    """This output cannot be written block by block."""


def streamable(path, kind):
    """Whether :class:`TableStream` writes ``path``: Parquet, and CSV
    uncompressed or with gzip, bz2 or xz."""
    return kind == "parquet" or _compression(path) in _OPENERS


_OPENERS = {None: open, "gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def write_table_atomically(table, path, kind, keep_index=None):
    """Write to a temporary name in the destination directory, flush it to
    disk and rename it to ``path``: ``path`` is either absent or complete
    (``keep_index`` as for :func:`write_table`)."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        write_table(table, temporary, kind, final_name=path,
                    keep_index=keep_index)
        flush_and_rename(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def flush_and_rename(temporary, path):
    """Flush ``temporary`` to disk, then rename it to ``path``."""
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def remove_stale_temporaries(path):
    """Delete what ``write_table_atomically`` left for ``path`` in a run
    that was killed while writing (call only while holding the run's
    lock)."""
    path = Path(path)
    for stale in path.parent.glob(_temporary_prefix(path) + "*"):
        stale.unlink(missing_ok=True)


def _temporary_name(path):
    """This process's temporary name for ``path``, in its directory."""
    return path.with_name(f"{_temporary_prefix(path)}{os.getpid()}")


def _temporary_prefix(path):
    return f".{Path(path).name}.tmp-"


def check_output_path(path):
    """Raise if ``path`` cannot be written (missing or read-only directory,
    a directory at ``path``, an unknown extension); returns the format.

    Writability is tested by creating and deleting a hidden file in the
    directory, which also holds for root and read-only file systems.
    """
    path = Path(path)
    kind = table_format(path, "output")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output directory {str(folder)!r} does not "
                                "exist" if not folder.exists() else
                                f"output directory {str(folder)!r} is not a "
                                "directory")
    if path.is_dir():
        raise IsADirectoryError(f"output {str(path)!r} is a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise PermissionError(f"output {str(path)!r} cannot be written: "
                              f"{exc.strerror or exc}") from None
    return kind


def _compression(path):
    name = Path(path).name.lower()
    return next((c for s, c in _COMPRESSION.items() if name.endswith(s)), None)


def _require(kind, purpose):
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(f"Parquet {purpose} needs pyarrow: pip install "
                              "pyarrow (or refinefit[parquet])") from None
    elif kind == "hdf5":
        try:
            import tables  # noqa: F401
        except ImportError:
            raise ImportError(f"HDF5 {purpose} needs PyTables: pip install "
                              "tables") from None


def _tables():
    """The table batch sizes in effect (see :class:`refinefit.config.Tables`)."""
    return config.current().tables
