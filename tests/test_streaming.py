"""Output written chunk by chunk (``refine_movie(..., return_table=False)``,
what the command does): the same file as the table written at the end."""
import bz2
import gzip
import lzma

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal
from same_refinement import assert_same_refinement

import refinefit
from refinefit.io import tables as table_io
from refinefit.io.tables import StreamUnsupported, TableStream
from refinefit.kernels.codes import CONVERGED, MAX_ITER
from refinefit.pipeline import checkpoint
from refinefit.pipeline import chunk as chunk_module
from refinefit.pipeline import movie as movie_module
from refinefit.synthetic import make_movie

DIAMETER = 11
_OPEN = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@pytest.fixture(scope="module")
def small():
    """6 frames of 128x128; the features in frame order (as trackpy.batch
    writes them) with a string and an int column refine_leastsq keeps."""
    frames, _, guess = make_movie(6, shape=(128, 128), n_single=10,
                                  n_dimer=3, n_trimer=2, seed=21)
    table = guess.sort_values("frame", kind="stable").reset_index(drop=True)
    table["label"] = [f"p{i}" for i in range(len(table))]
    table["mass"] = np.arange(len(table), dtype=np.int32)
    return frames, table


def _raw(path):
    opener = _OPEN.get(path.suffix, open)
    with opener(path, "rb") as handle:
        return handle.read()


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"frame": np.repeat(np.arange(n // 4 + 1), 4)[:n],
                         "x": rng.normal(size=n), "cluster": rng.integers(
                             0, 9, n), "label": [f"f{i}" for i in range(n)],
                         "cost": np.where(rng.random(n) < 0.2, np.nan, 1.0)})


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.csv.bz2",
                                  "t.csv.xz", "t.parquet"])
@pytest.mark.parametrize("index", ["default", "other"])
def test_stream_writes_the_file_write_table_writes(tmp_path, configure,
                                                   name, index):
    configure(tables=dict(row_group=10))
    table = _table(47)
    if index == "other":
        table.index = np.arange(len(table)) * 2 + 5
    kind = table_io.table_format(name, "output")
    whole, streamed = tmp_path / "whole" / name, tmp_path / name
    whole.parent.mkdir()
    table_io.write_table_atomically(table, whole, kind)
    stream = TableStream(streamed, kind, keep_index=index == "other")
    for lo, hi in [(0, 3), (3, 20), (20, 21), (21, 47)]:
        stream.write(table.iloc[lo:hi])
    assert not streamed.exists()  # under a temporary name until finished
    stream.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["whole", name])
    if kind == "csv":
        assert _raw(streamed) == _raw(whole)
    else:
        assert_frame_equal(pd.read_parquet(streamed), pd.read_parquet(whole))
        # blocks gathered into groups of at least 10 rows: 3+17, 1+26
        assert pq.ParquetFile(streamed).metadata.num_row_groups == 2


def test_stream_refuses_a_block_of_other_types(tmp_path):
    table = _table(8).astype({"label": object})
    stream = TableStream(tmp_path / "t.parquet", "parquet", keep_index=False)
    stream.write(table.iloc[:4])
    with pytest.raises(StreamUnsupported, match="other Parquet types"):
        stream.write(table.iloc[4:].assign(label=np.arange(4)))
    stream.abort()
    assert list(tmp_path.iterdir()) == []


def _numeric_table(n, seed=0):
    """Columns of every NumPy kind the engine writes, NaN in ``cost``."""
    table = _table(n, seed).drop(columns="label")
    return table.assign(mass=np.arange(n, dtype=np.int32),
                        inside=np.arange(n) % 3 == 0)


def test_stream_of_arrays_writes_what_a_stream_of_tables_writes(
        tmp_path, configure):
    configure(tables=dict(row_group=10))
    table = _numeric_table(47)
    files = {}
    for way in ("tables", "arrays"):
        files[way] = tmp_path / f"{way}.parquet"
        stream = TableStream(files[way], "parquet", keep_index=False)
        assert stream.takes_arrays
        for lo, hi in [(0, 3), (3, 20), (20, 21), (21, 47)]:
            block = table.iloc[lo:hi]
            if way == "tables":
                stream.write(block)
            else:
                stream.write_arrays({name: block[name].to_numpy()
                                     for name in block.columns})
        stream.finish()
    tables, arrays = (pq.read_table(files[way]) for way in files)
    assert arrays.equals(tables, check_metadata=True)
    assert arrays.column("cost").null_count == table["cost"].isna().sum() > 0
    assert_frame_equal(pd.read_parquet(files["arrays"]), table)


def test_stream_of_arrays_refuses_a_block_of_other_types(tmp_path):
    table = _numeric_table(8)
    stream = TableStream(tmp_path / "t.parquet", "parquet", keep_index=False)
    stream.write_arrays({name: table[name].to_numpy()[:4]
                         for name in table.columns})
    with pytest.raises(StreamUnsupported, match="other Parquet types"):
        stream.write_arrays({name: table[name].to_numpy()[4:].astype(float)
                             for name in table.columns})
    stream.abort()
    for kind, name, keep_index in [("csv", "t.csv", False),
                                   ("parquet", "t.parquet", True)]:
        stream = TableStream(tmp_path / name, kind, keep_index=keep_index)
        assert not stream.takes_arrays
        with pytest.raises(ValueError, match="write_arrays needs Parquet"):
            stream.write_arrays({"x": np.zeros(2)})
        stream.abort()
    assert list(tmp_path.iterdir()) == []


def test_zstd_csv_is_not_streamed(tmp_path):
    assert not table_io.streamable(tmp_path / "t.csv.zst", "csv")
    assert table_io.streamable(tmp_path / "t.csv.xz", "csv")


def _read(path):
    return (pd.read_parquet if path.suffix == ".parquet" else pd.read_csv)(
        path)


def _as_read(expected, path):
    """``expected`` as read back from ``path``: CSV has no int32."""
    if path.suffix == ".parquet":
        return expected
    return expected.astype({"mass": np.int64})


def _count_streamed_blocks(monkeypatch):
    blocks = []
    real = TableStream.write

    def write(self, block):
        blocks.append(len(block))
        return real(self, block)

    monkeypatch.setattr(TableStream, "write", write)
    return blocks


@pytest.mark.parametrize("name", ["out.parquet", "out.csv.gz"])
def test_streamed_output_equals_refine_leastsq(small, tmp_path, monkeypatch,
                                               name):
    frames, table = small
    np.save(tmp_path / "movie.npy", frames)
    blocks = _count_streamed_blocks(monkeypatch)
    out = tmp_path / name
    got = refinefit.refine_movie(tmp_path / "movie.npy", table, out,
                                 diameter=DIAMETER, chunk_frames=2,
                                 quiet=True, return_table=False)
    assert got is None
    assert blocks == [int((table["frame"] // 2 == k).sum()) for k in range(3)]
    assert_same_refinement(_read(out), _as_read(
        refinefit.refine_leastsq(table, frames, DIAMETER), out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.npy", name]


def test_rows_out_of_frame_order_are_written_at_the_end(small, tmp_path,
                                                        monkeypatch):
    frames, table = small
    shuffled = table.sample(frac=1.0, random_state=3)
    np.save(tmp_path / "movie.npy", frames)
    blocks = _count_streamed_blocks(monkeypatch)
    out = tmp_path / "out.parquet"
    refinefit.refine_movie(tmp_path / "movie.npy", shuffled, out,
                           diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert blocks == []
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        shuffled, frames, DIAMETER))


def test_a_refused_block_falls_back_to_the_chunk_files(small, tmp_path,
                                                       monkeypatch, capsys):
    frames, table = small
    table = table.copy()
    table.loc[3, "x"] = np.nan  # a failed fit, counted in the summary
    np.save(tmp_path / "movie.npy", frames)
    real = TableStream.write
    calls = []

    def refuse_the_second(self, block):
        calls.append(1)
        if len(calls) == 2:
            raise StreamUnsupported("test")
        return real(self, block)

    monkeypatch.setattr(TableStream, "write", refuse_the_second)
    out = tmp_path / "out.csv"
    refinefit.refine_movie(tmp_path / "movie.npy", table, out,
                           diameter=DIAMETER, chunk_frames=1, quiet=False,
                           return_table=False)
    assert len(calls) == 2  # nothing more after the refusal
    assert "1 failed (1 invalid_start)" in capsys.readouterr().out
    assert_same_refinement(_read(out), _as_read(refinefit.refine_leastsq(
        table, frames, DIAMETER), out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.npy",
                                                          "out.csv"]


def test_failed_fits_are_counted_while_streaming(small, tmp_path, capsys):
    frames, table = small
    table = table.copy()
    table.loc[[3, 40], "y"] = np.nan
    np.save(tmp_path / "movie.npy", frames)
    refinefit.refine_movie(tmp_path / "movie.npy", table,
                           tmp_path / "out.parquet", diameter=DIAMETER,
                           chunk_frames=2, quiet=False, return_table=False)
    assert "2 failed (2 invalid_start)" in capsys.readouterr().out


def test_interrupted_then_resumed_stream(small, tmp_path, monkeypatch):
    frames, table = small
    np.save(tmp_path / "movie.npy", frames)
    out = tmp_path / "out.parquet"
    args = (tmp_path / "movie.npy", table, out)
    options = dict(diameter=DIAMETER, chunk_frames=1, quiet=True,
                   return_table=False)
    real = movie_module.refine_leastsq
    calls = []

    def interrupt_the_fourth(chunk, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # the up-front check, then chunks 0, 1, 2, 3
            raise KeyboardInterrupt
        return real(chunk, *a, **k)

    with monkeypatch.context() as patch:
        for module in (movie_module, chunk_module):  # check, chunks
            patch.setattr(module, "refine_leastsq", interrupt_the_fourth)
        with pytest.raises(KeyboardInterrupt):
            refinefit.refine_movie(*args, **options)
    parts = checkpoint.parts_folder(out)
    assert sorted(p.name for p in parts.glob("chunk-*")) == [
        f"chunk-00000{k}.npz" for k in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "movie.npy", parts.name]  # no output, not even a temporary one
    loaded = []
    real_load = checkpoint.PartStore.load
    monkeypatch.setattr(checkpoint.PartStore, "load",
                        lambda self, k: loaded.append(k) or real_load(self, k))
    blocks = _count_streamed_blocks(monkeypatch)
    refinefit.refine_movie(*args, **options)
    assert loaded == [0, 1, 2]  # streamed from the chunk files
    assert len(blocks) == 6
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        table, frames, DIAMETER))
    assert not parts.exists()


def test_return_table_is_checked(small, tmp_path):
    frames, table = small
    with pytest.raises(TypeError, match="return_table"):
        refinefit.refine_movie(frames, table, tmp_path / "o.csv",
                               diameter=DIAMETER, return_table="no")
    with pytest.raises(ValueError, match="return_table=False needs out"):
        refinefit.refine_movie(frames, table, diameter=DIAMETER,
                               return_table=False)


def test_chunks_are_written_in_order_with_cluster_labels_offset(small):
    _, table = small
    table = table.iloc[:9]
    packs = {}
    for k in range(3):
        rows = np.arange(3 * k, 3 * k + 3)
        refined = table.iloc[rows].assign(cluster=[0, 1, 1],
                                          cost=[0.5, np.nan, 0.5],
                                          status=[0, MAX_ITER, 0])
        packs[k] = checkpoint.pack_chunk(rows, refined)

    class Recorder:  # a CSV stream, say: takes DataFrames
        blocks, finished, takes_arrays = [], False, False

        def write(self, block):
            self.blocks.append(block)

        def finish(self):
            self.finished = True

    class Store:  # chunk 1 was committed by an earlier run
        def load(self, k):
            return packs[k]

    recorder = Recorder()
    output = checkpoint.OrderedOutput(recorder, table, 3, Store(), {1})
    output.add(2, packs[2])
    assert recorder.blocks == []  # chunk 0 not there yet
    output.add(0, packs[0])
    output.finish()
    assert recorder.finished
    written = pd.concat(recorder.blocks)
    assert_frame_equal(written.drop(columns=["cluster", "cost", "status"]),
                       table.drop(columns=["cluster", "cost", "status"],
                                  errors="ignore"))
    assert written["cluster"].tolist() == [0, 1, 1, 2, 3, 3, 4, 5, 5]
    assert output.status_counts[CONVERGED] == 6
    assert output.status_counts[MAX_ITER] == 3
    assert output.status_counts.sum() == 9


def test_index_and_categories_survive_streaming(small, tmp_path):
    frames, table = small
    table = table.assign(kind=pd.Categorical(
        np.where(np.arange(len(table)) % 3, "bead", "cell")))
    table.index = np.arange(len(table)) * 3 + 7
    np.save(tmp_path / "movie.npy", frames)
    out = tmp_path / "out.parquet"
    refinefit.refine_movie(tmp_path / "movie.npy", table, out,
                           diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        table, frames, DIAMETER))


def test_a_failed_commit_stops_the_run(small, tmp_path, monkeypatch):
    frames, table = small
    np.save(tmp_path / "movie.npy", frames)
    out = tmp_path / "out.parquet"
    real = checkpoint.PartStore.commit

    def disk_full_on_the_second(self, k, packed):
        if k == 1:
            raise OSError(28, "No space left on device")
        return real(self, k, packed)

    monkeypatch.setattr(checkpoint.PartStore, "commit",
                        disk_full_on_the_second)
    with pytest.raises(OSError, match="No space left"):
        refinefit.refine_movie(tmp_path / "movie.npy", table, out,
                               diameter=DIAMETER, chunk_frames=1, quiet=True,
                               return_table=False)
    parts = checkpoint.parts_folder(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "movie.npy", parts.name]  # no output, not even a temporary one
    committed = sorted(p.name for p in parts.glob("chunk-*"))
    # chunks refined while the failure was on its way may be committed too
    assert committed[0] == "chunk-000000.npz"
    assert "chunk-000001.npz" not in committed
    monkeypatch.setattr(checkpoint.PartStore, "commit", real)
    refinefit.refine_movie(tmp_path / "movie.npy", table, out,
                           diameter=DIAMETER, chunk_frames=1, quiet=True,
                           return_table=False)
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        table, frames, DIAMETER))


# features read from Parquet a range of rows at a time (what the command
# does with a Parquet features file in frame order)

def _numeric(table):
    """The features without the string column: what ParquetFeatures reads
    in ranges."""
    return table.drop(columns="label")


def test_parquet_features_read_ranges_as_the_whole_file(small, tmp_path,
                                                        configure):
    _, table = small
    table = _numeric(table)
    path = tmp_path / "f.parquet"
    table.to_parquet(path, row_group_size=10)  # ranges cross row groups
    configure(tables=dict(read_batch=7))
    whole = pd.read_parquet(path)
    features = table_io.ParquetFeatures.open(path)
    assert features.n_rows == len(table)
    assert_frame_equal(features.head, whole.iloc[:0])
    batches = list(features.column_batches("x", batch_size=20))
    assert [len(b) for b in batches] == [20] * (len(table) // 20) + [
        len(table) % 20]
    np.testing.assert_array_equal(np.concatenate(batches), whole["x"])
    for lo, hi in [(0, 3), (3, 20), (20, 20), (25, 40), (47, 48),
                   (60, len(table))]:
        assert_frame_equal(features.rows(lo, hi), whole.iloc[lo:hi])
    with pytest.raises(ValueError, match="not ahead"):
        features.rows(0, 5)  # behind: ranges are read in order
    features.close()


@pytest.mark.parametrize("change", ["index", "string", "category",
                                    "nullable int", "int with a null",
                                    "column levels"])
def test_parquet_features_not_read_in_ranges(small, tmp_path, change):
    """Files whose ranges could read otherwise than the whole file: a
    stored index, non-numeric columns, integers with nulls."""
    import pyarrow as pa

    _, table = small
    table = _numeric(table)
    path = tmp_path / "f.parquet"
    assert table_io.ParquetFeatures.open(path) is None  # no file
    table.to_parquet(path)
    assert table_io.ParquetFeatures.open(path) is not None
    if change == "index":
        table.index = table.index + 1
    elif change == "string":
        table["label"] = "p"
    elif change == "category":
        table["kind"] = pd.Categorical(["bead"] * len(table))
    elif change == "nullable int":
        table["mass"] = pd.array([1] * (len(table) - 1) + [None],
                                 dtype="Int64")
    elif change == "column levels":
        table.columns = pd.MultiIndex.from_tuples([(c, "")
                                                   for c in table.columns])
    if change == "int with a null":  # a file written without pandas
        pq.write_table(pa.table({"frame": pa.array(
            [0] * (len(table) - 1) + [None], pa.int64())}), path)
    else:
        table.to_parquet(path)
    assert table_io.ParquetFeatures.open(path) is None
    table.to_csv(tmp_path / "f.csv")
    assert table_io.ParquetFeatures.open(tmp_path / "f.csv") is None


def _spy_reads(monkeypatch):
    """Records the features files read whole and the ranges read."""
    whole, ranges = [], []
    real_read, real_rows = movie_module.read_features, \
        table_io.StreamedFeatures.rows
    monkeypatch.setattr(movie_module, "read_features",
                        lambda path: whole.append(path) or real_read(path))
    monkeypatch.setattr(table_io.StreamedFeatures, "rows",
                        lambda self, lo, hi: ranges.append((int(lo), int(hi)))
                        or real_rows(self, lo, hi))
    return whole, ranges


@pytest.mark.parametrize("name", ["out.parquet", "out.csv"])
def test_parquet_features_in_frame_order_are_read_chunk_by_chunk(
        small, tmp_path, monkeypatch, configure, name):
    frames, table = small
    table = _numeric(table)
    table.to_parquet(tmp_path / "f.parquet", row_group_size=16)
    np.save(tmp_path / "movie.npy", frames)
    configure(tables=dict(read_batch=7))
    whole, ranges = _spy_reads(monkeypatch)
    arrays = []  # blocks written as NumPy columns, not DataFrames
    real_write_arrays = TableStream.write_arrays
    monkeypatch.setattr(TableStream, "write_arrays", lambda self, columns:
                        arrays.append(len(columns["x"]))
                        or real_write_arrays(self, columns))
    out = tmp_path / name
    refinefit.refine_movie(tmp_path / "movie.npy", tmp_path / "f.parquet",
                           out, diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert whole == []
    ends = [int((table["frame"] < 2 * (k + 1)).sum()) for k in range(3)]
    assert ranges == list(zip([0] + ends[:2], ends))
    assert arrays == (list(np.diff([0] + ends)) if name == "out.parquet"
                      else [])
    assert_same_refinement(_read(out), _as_read(refinefit.refine_leastsq(
        table, frames, DIAMETER), out))
    # with the table returned, or features out of frame order: read whole
    got = refinefit.refine_movie(tmp_path / "movie.npy",
                                 tmp_path / "f.parquet", diameter=DIAMETER,
                                 chunk_frames=2, quiet=True)
    assert len(whole) == 1 and len(ranges) == 3
    assert_same_refinement(got, refinefit.refine_leastsq(
        table, frames, DIAMETER))
    shuffled = table.sample(frac=1.0, random_state=5).reset_index(drop=True)
    shuffled.to_parquet(tmp_path / "f.parquet")
    out.unlink()
    refinefit.refine_movie(tmp_path / "movie.npy", tmp_path / "f.parquet",
                           out, diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert len(whole) == 2 and len(ranges) == 3
    assert_same_refinement(_read(out), _as_read(refinefit.refine_leastsq(
        shuffled, frames, DIAMETER), out))


def test_parquet_features_resume_chunk_by_chunk(small, tmp_path,
                                                monkeypatch, capsys):
    frames, table = small
    table = _numeric(table)
    table.loc[5, "x"] = np.nan  # a failed fit, counted in the summary
    table.to_parquet(tmp_path / "f.parquet")
    np.save(tmp_path / "movie.npy", frames)
    out = tmp_path / "out.parquet"
    args = (tmp_path / "movie.npy", tmp_path / "f.parquet", out)
    options = dict(diameter=DIAMETER, chunk_frames=1, return_table=False)
    real = movie_module.refine_leastsq
    calls = []

    def interrupt_the_third(chunk, *a, **k):
        calls.append(1)
        if len(calls) == 4:  # the up-front check, then chunks 0, 1, 2
            raise KeyboardInterrupt
        return real(chunk, *a, **k)

    with monkeypatch.context() as patch:
        for module in (movie_module, chunk_module):  # check, chunks
            patch.setattr(module, "refine_leastsq", interrupt_the_third)
        with pytest.raises(KeyboardInterrupt):
            refinefit.refine_movie(*args, quiet=True, **options)
    whole, ranges = _spy_reads(monkeypatch)
    capsys.readouterr()
    refinefit.refine_movie(*args, **options)
    assert whole == []
    per_frame = np.cumsum([0] + [int((table["frame"] == k).sum())
                                 for k in range(6)])
    assert ranges == list(zip(per_frame[2:-1], per_frame[3:]))  # 2 to 5
    assert "1 failed (1 invalid_start)" in capsys.readouterr().out
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        table, frames, DIAMETER))


def _bad_frames(table, case):
    table = table.copy()
    if case == "no frame column":
        return table.drop(columns="frame")
    if case == "no x column":
        return table.drop(columns="x")
    if case == "frames beyond the end":
        table.loc[[4, 30, 31, 90], "frame"] = [9, 6, 9, 12]
    elif case == "fractional frames":
        table["frame"] = table["frame"] + 0.5
    elif case == "missing frame":
        table["frame"] = table["frame"].astype(float)
        table.loc[70, "frame"] = np.nan
    elif case == "bool frames":
        table["frame"] = table["frame"] > 2
    return table


@pytest.mark.parametrize("case", ["no frame column", "no x column",
                                  "frames beyond the end",
                                  "fractional frames", "missing frame",
                                  "bool frames"])
def test_parquet_features_read_in_batches_get_the_same_errors(
        small, tmp_path, monkeypatch, case):
    """Frame numbers read a batch at a time (of 7 rows here) are checked as
    a table's are, with the same message; nothing is written."""
    frames, table = small
    bad = _bad_frames(_numeric(table), case)
    bad.to_parquet(tmp_path / "f.parquet")
    np.save(tmp_path / "movie.npy", frames)
    real = table_io.ParquetFeatures.column_batches
    monkeypatch.setattr(table_io.ParquetFeatures, "column_batches",
                        lambda self, name: real(self, name, batch_size=7))
    whole, _ = _spy_reads(monkeypatch)
    options = dict(diameter=DIAMETER, chunk_frames=2, quiet=True)
    with pytest.raises((KeyError, ValueError)) as from_table:
        refinefit.refine_movie(tmp_path / "movie.npy", bad,
                               tmp_path / "a.parquet", **options)
    with pytest.raises(from_table.type) as from_file:
        refinefit.refine_movie(tmp_path / "movie.npy", tmp_path / "f.parquet",
                               tmp_path / "b.parquet", return_table=False,
                               **options)
    assert whole == []  # the file was not read whole
    assert str(from_file.value) == str(from_table.value)
    if case == "frames beyond the end":
        assert "frame(s) 6, 9, 12 beyond the movie's end" in str(
            from_file.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet",
                                                          "movie.npy"]


def test_rows_out_of_frame_order_across_batches_are_read_whole(
        small, tmp_path, monkeypatch):
    """Each batch of frame numbers in order, but not the batches."""
    frames, table = small
    table = _numeric(table)
    late = table["frame"] >= 3
    swapped = pd.concat([table[late], table[~late]], ignore_index=True)
    swapped.to_parquet(tmp_path / "f.parquet")
    np.save(tmp_path / "movie.npy", frames)
    real = table_io.ParquetFeatures.column_batches
    monkeypatch.setattr(table_io.ParquetFeatures, "column_batches",
                        lambda self, name: real(self, name,
                                                batch_size=int(late.sum())))
    whole, ranges = _spy_reads(monkeypatch)
    out = tmp_path / "out.parquet"
    refinefit.refine_movie(tmp_path / "movie.npy", tmp_path / "f.parquet",
                           out, diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert len(whole) == 1 and ranges == []
    assert_same_refinement(pd.read_parquet(out), refinefit.refine_leastsq(
        swapped, frames, DIAMETER))


@pytest.mark.parametrize("in_order", [True, False])
def test_chunk_plan_rows(in_order):
    rng = np.random.default_rng(4)
    frame_numbers = np.sort(rng.integers(0, 40, 500)) if in_order else \
        rng.integers(0, 40, 500)
    index = movie_module.FrameIndex.of(frame_numbers)
    chunks = movie_module._plan_chunks(index, 6, 70)
    covered = np.concatenate([np.asarray(rows) for _, rows in chunks])
    np.testing.assert_array_equal(np.sort(covered), np.arange(500))
    for frames, rows in chunks:
        assert isinstance(rows, range) == in_order
        assert len(frames) <= 6 and (len(rows) <= 70 or len(frames) == 1)
        np.testing.assert_array_equal(np.unique(frame_numbers[rows]), frames)
        assert list(rows) == sorted(rows)
    firsts = [frames[0] for frames, _ in chunks]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("name", ["f.csv", "f.csv.gz"])
@pytest.mark.parametrize("with_index", [False, True])
def test_csv_features_read_ranges_as_the_whole_file(small, tmp_path,
                                                    configure, name,
                                                    with_index):
    _, table = small
    table = _numeric(table)
    table["flag"] = table["frame"] > 2
    table["mass"] = table["mass"].astype("Int64")
    table.loc[100, "mass"] = pd.NA  # int64 blocks first, then float64
    path = tmp_path / name
    table.to_csv(path, index=with_index)
    configure(tables=dict(csv_stream_bytes=0, read_batch=7))
    whole = table_io.read_features(path)
    assert whole["mass"].dtype == np.float64
    features = table_io.open_streamed_features(path)
    assert isinstance(features, table_io.CsvFeatures)
    assert features.n_rows == len(table)
    assert_frame_equal(features.head, whole.iloc[:0], check_index_type=False)
    batches = list(features.column_batches("mass", batch_size=50))
    np.testing.assert_array_equal(np.concatenate(batches), whole["mass"])
    for lo, hi in [(0, 3), (3, 20), (20, 20), (25, 40), (47, 48),
                   (99, 101), (110, len(table))]:
        assert_frame_equal(features.rows(lo, hi), whole.iloc[lo:hi],
                           check_index_type=False)
    with pytest.raises(ValueError, match="not ahead"):
        features.rows(0, 5)
    features.close()


@pytest.mark.parametrize("change", ["small file", "string", "index",
                                    "unnamed index", "bool with a gap",
                                    "zstd"])
def test_csv_features_not_read_in_ranges(small, tmp_path, configure,
                                         change):
    _, table = small
    table = _numeric(table)
    path = tmp_path / ("f.csv.zst" if change == "zstd" else "f.csv")
    if change != "small file":
        configure(tables=dict(csv_stream_bytes=0))
    if change == "string":
        table["label"] = "p"
    elif change == "index":
        table.index = table.index + 1
    elif change == "bool with a gap":
        table["flag"] = (table["frame"] > 2).astype(object)
        table.loc[5, "flag"] = None
    if change == "zstd":
        path.write_bytes(b"not read")
    elif change == "unnamed index":  # rows one field longer than the header
        table.index = table.index + 100
        table.to_csv(path, index_label=False)
        assert table_io.read_features(path).index[0] == 100
    else:
        table.to_csv(path, index=change == "index")
    assert table_io.open_streamed_features(path) is None


def test_csv_features_in_frame_order_are_read_chunk_by_chunk(
        small, tmp_path, monkeypatch, configure):
    frames, table = small
    table = _numeric(table)
    table.to_csv(tmp_path / "f.csv")
    np.save(tmp_path / "movie.npy", frames)
    configure(tables=dict(csv_stream_bytes=0, read_batch=7))
    whole, ranges = _spy_reads(monkeypatch)
    out = tmp_path / "out.parquet"
    refinefit.refine_movie(tmp_path / "movie.npy", tmp_path / "f.csv", out,
                           diameter=DIAMETER, chunk_frames=2, quiet=True,
                           return_table=False)
    assert whole == [] and len(ranges) == 3
    expected = refinefit.refine_leastsq(table, frames, DIAMETER)
    assert_same_refinement(pd.read_parquet(out), expected.astype(
        {"mass": np.int64}))


@pytest.mark.parametrize("column", ["frame", "x"])
def test_a_damaged_parquet_file_is_a_features_error(small, tmp_path,
                                                    column):
    """A page that does not decode, found while streaming (in the frame
    column, or in a chunk's rows after other chunks were refined), gives
    the error read_features gives for the file."""
    frames, table = small
    table = pd.concat([_numeric(table)] * 4).sort_values(
        "frame", kind="stable").reset_index(drop=True)
    path = tmp_path / "f.parquet"
    table.to_parquet(path, compression=None, row_group_size=100)
    file = pq.ParquetFile(path)
    position = file.schema_arrow.names.index(column)
    offset = file.metadata.row_group(3).column(position).data_page_offset
    file.close()
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    np.save(tmp_path / "movie.npy", frames)
    with pytest.raises(ValueError) as whole:
        table_io.read_features(path)
    assert table_io.open_streamed_features(path) is not None
    with pytest.raises(ValueError, match="cannot read features file") as got:
        refinefit.refine_movie(tmp_path / "movie.npy", path,
                               tmp_path / "out.parquet", diameter=DIAMETER,
                               chunk_frames=1, quiet=True,
                               return_table=False)
    assert str(got.value) == str(whole.value)
    assert not (tmp_path / "out.parquet").exists()
