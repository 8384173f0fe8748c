"""Input rules of refine_leastsq: DataFrame, readers, options, errors."""
import copy
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pims
import pytest

from refinefit import refine_leastsq
from refinefit.io.frames import as_kernel_image
from refinefit.kernels.codes import (
    BLANK,
    CONVERGED,
    INVALID_START,
    MAX_ITER,
    NO_PIXELS,
    OUTSIDE_FRAME,
)

# positions on noise-free images (model tails cut off at the mask edge only)
EXACT_POS = 0.01
# positions on images with a little noise or missing pixels
NOISY_POS = 0.05

SHAPE = (48, 64)
SIZE = 2.0
SIGNAL = 150.0
BACKGROUND = 20.0
DIAMETER = 15      # radius 7: the Gaussian tail at the edge is exp(-49/4)
TRUTH = np.array([[12.3, 14.6], [30.7, 40.2], [20.4, 52.9]])


def draw(shape=SHAPE, positions=TRUTH, signal=SIGNAL, size=SIZE,
         background=BACKGROUND):
    """Gaussian spots ``signal * exp(-d^2 / size^2)`` (the 2D model), drawn here."""
    grid = np.indices(shape, dtype=float)
    image = np.full(shape, float(background))
    for pos in positions:
        d2 = sum((g - p) ** 2 for g, p in zip(grid, pos))
        image += signal * np.exp(-d2 / size ** 2)
    return image


def features(positions=TRUTH, offset=(0.4, -0.3), **columns):
    positions = np.asarray(positions, dtype=float) + np.asarray(offset)
    data = {"y": positions[:, 0], "x": positions[:, 1], "signal": 120.0,
            "size": SIZE}
    data.update(columns)
    return pd.DataFrame(data)


def positions(out, cols=("y", "x")):
    return out[list(cols)].to_numpy()


@pytest.fixture(scope="module")
def image():
    return draw()


# ------------------------------------------------------------ the DataFrame

def test_input_dataframe_is_never_modified(image):
    f = features(frame=0, label=["a", "b", "c"])
    f.index = [7, 3, 5]
    f["mass"] = np.array([1, 2, 3], dtype=np.int32)
    before = copy.deepcopy(f)
    columns = list(f.columns)
    dtypes = f.dtypes.copy()
    image_before = image.copy()
    out = refine_leastsq(f, image, DIAMETER, param_mode={"size": "var"},
                         param_val={"signal": 100.0})
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_array_equal(image, image_before)
    assert list(f.columns) == columns
    pd.testing.assert_series_equal(f.dtypes, dtypes)
    pd.testing.assert_frame_equal(f, before, check_exact=True)


@pytest.mark.parametrize("as_frame", [False, True], ids=["ndarray", "pims.Frame"])
def test_input_without_frame_column_is_not_modified(image, as_frame):
    f = features().drop(columns="signal")
    before = copy.deepcopy(f)
    reader = pims.Frame(image, frame_no=4) if as_frame else image
    out = refine_leastsq(f, reader, DIAMETER, param_val={"signal": 100.0})
    assert list(f.columns) == list(before.columns)
    pd.testing.assert_frame_equal(f, before, check_exact=True)
    assert (out["frame"] == (4 if as_frame else 0)).all()


@pytest.mark.parametrize("index", [
    pd.Index([10, 10, 4]),                      # duplicate labels
    pd.Index(["c", "a", "b"]),                  # non-default, unsorted
    pd.MultiIndex.from_tuples([(0, 1), (0, 0), (1, 0)]),
], ids=["duplicate", "strings", "multi"])
def test_output_keeps_index_order_and_extra_columns(image, index):
    f = features(note=["first", "second", "third"], mass=[1.0, 2.0, 3.0])
    f.index = index
    out = refine_leastsq(f, image, DIAMETER)
    assert out.index.equals(f.index)
    assert list(out["note"]) == ["first", "second", "third"]
    assert list(out["mass"]) == [1.0, 2.0, 3.0]
    for col in f.columns:
        assert col in out.columns
    for col in ("cluster", "cluster_size", "cost", "background"):
        assert col in out.columns
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


def test_row_order_is_kept_when_frames_are_unsorted():
    movie = np.stack([draw(positions=TRUTH + k) for k in range(3)])
    frames = [2, 0, 1, 0, 2, 1, 1, 0, 2]
    truth = np.array([TRUTH[i % 3] + fr for i, fr in enumerate(frames)])
    f = features(truth, frame=frames)
    f.index = np.arange(len(f))[::-1]
    out = refine_leastsq(f, movie, DIAMETER)
    assert out.index.equals(f.index)
    assert list(out["frame"]) == frames
    np.testing.assert_allclose(positions(out), truth, atol=EXACT_POS)


# ------------------------------------------------------- failing features

def test_nan_initial_parameters_give_nan_cost(image):
    f = features()
    f.loc[1, "x"] = np.nan
    out = refine_leastsq(f, image, DIAMETER)
    assert np.isnan(out["cost"][1])
    assert out["status"].tolist() == [CONVERGED, INVALID_START, CONVERGED]
    assert out["status"].dtype == np.int64
    assert np.isfinite(out["cost"][[0, 2]]).all()
    np.testing.assert_allclose(positions(out)[[0, 2]], TRUTH[[0, 2]],
                               atol=EXACT_POS)


def test_nullable_columns_with_missing_values_are_invalid_starts(image):
    """pandas' nullable dtypes (Int64, Float64) are numeric; a missing
    value is a start the data cannot use, as NaN is."""
    f = features()
    f["x"] = pd.array([14, None, 53], dtype="Int64")
    f["signal"] = pd.array([120.0, 120.0, None], dtype="Float64")
    out = refine_leastsq(f, image, DIAMETER)
    assert out["status"].tolist() == [CONVERGED, INVALID_START, INVALID_START]
    np.testing.assert_allclose(positions(out)[[0]], TRUTH[[0]], atol=EXACT_POS)


@pytest.mark.parametrize("column", [["a", "b", "c"], [True, False, True]])
def test_a_text_or_boolean_parameter_column_is_a_type_error(image, column):
    with pytest.raises(TypeError, match="column 'x' must be numeric"):
        refine_leastsq(features().assign(x=column), image, DIAMETER)


def test_nan_signal_gives_nan_cost(image):
    f = features()
    f.loc[2, "signal"] = np.nan
    out = refine_leastsq(f, image, DIAMETER)
    assert np.isnan(out["cost"][2])
    assert np.isfinite(out["cost"][[0, 1]]).all()


def test_all_nan_mask_gives_nan_cost(image):
    holey = image.copy()
    y, x = np.round(TRUTH[1]).astype(int)
    holey[y - 9:y + 10, x - 9:x + 10] = np.nan
    out = refine_leastsq(features(), holey, DIAMETER)
    assert np.isnan(out["cost"][1])
    assert out["status"].tolist() == [CONVERGED, NO_PIXELS, CONVERGED]
    assert np.isfinite(out["cost"][[0, 2]]).all()
    np.testing.assert_allclose(positions(out)[[0, 2]], TRUTH[[0, 2]],
                               atol=EXACT_POS)


def test_feature_at_the_image_edge():
    truth = np.array([[1.6, 30.2], [24.0, 62.3], [46.8, 0.4]])
    out = refine_leastsq(features(truth, offset=(0.3, -0.3)),
                         draw(positions=truth), DIAMETER)
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out), truth, atol=EXACT_POS)


def test_mask_outside_image_gives_nan_cost(image):
    f = features()
    f.loc[1, ["y", "x"]] = [-30.0, 200.0]
    out = refine_leastsq(f, image, DIAMETER)
    assert np.isnan(out["cost"][1])
    assert out["status"].tolist() == [CONVERGED, OUTSIDE_FRAME, CONVERGED]
    assert out.loc[1, "y"] == -30.0 and out.loc[1, "x"] == 200.0
    assert np.isfinite(out["cost"][[0, 2]]).all()
    np.testing.assert_allclose(positions(out)[[0, 2]], TRUTH[[0, 2]],
                               atol=EXACT_POS)


def test_frame_missing_from_movie_raises_value_error():
    movie = np.stack([draw()] * 3)
    f = features(frame=[0, 7, 1])
    with pytest.raises(ValueError, match=r"frame.*\b7\b"):
        refine_leastsq(f, movie, DIAMETER)


def test_frame_missing_from_pims_reader_raises_value_error():
    reader = _Movie([draw()] * 3)
    f = features(frame=[0, 1, 7])
    with pytest.raises(ValueError, match=r"frame.*\b7\b"):
        refine_leastsq(f, reader, DIAMETER)


# ------------------------------------------------------------- bad input

def test_missing_position_column(image):
    f = features().drop(columns="x")
    with pytest.raises(KeyError, match="pos_columns"):
        refine_leastsq(f, image, DIAMETER)
    with pytest.raises(KeyError, match="'x'"):
        refine_leastsq(f, image, DIAMETER)
    with pytest.raises(KeyError, match="pos_columns"):
        refine_leastsq(features(), image, DIAMETER, pos_columns=["y", "xx"])


def test_missing_time_column_with_movie():
    movie = np.stack([draw()] * 2)
    with pytest.raises(KeyError, match="t_column"):
        refine_leastsq(features(), movie, DIAMETER)
    with pytest.raises(KeyError, match="'time'"):
        refine_leastsq(features(frame=0), movie, DIAMETER, t_column="time")


def test_position_dimensionality_must_match_image(image):
    f = features(z=5.0)
    with pytest.raises(ValueError, match="pos_columns"):
        refine_leastsq(f, image, DIAMETER)
    # a 4D array is neither one 2D image nor a movie of 2D frames
    with pytest.raises(ValueError, match="pos_columns"):
        refine_leastsq(features(frame=0), image[None, None], DIAMETER)


def test_one_position_column_is_rejected(image):
    """Positions must be 2D or 3D (trackpy's r2 functions). With one column
    the 2D array reads as a movie of 1D rows, which must be rejected up front,
    never handed to the 2D/3D mask kernels."""
    with pytest.raises(ValueError, match="pos_columns|2D or 3D"):
        refine_leastsq(features(frame=0), image, DIAMETER, pos_columns=["x"])


def test_four_position_columns_are_rejected(image):
    hyper = np.stack([np.stack([image[:20, :20]] * 9)] * 9)
    f = pd.DataFrame({"w": [4.0], "z": [4.0], "y": [10.2], "x": [9.9],
                      "signal": [100.0], "size": [2.0]})
    with pytest.raises(ValueError, match="pos_columns|2D or 3D"):
        refine_leastsq(f, hyper, 7, pos_columns=["w", "z", "y", "x"])


def test_unknown_fit_function(image):
    with pytest.raises(ValueError, match="fit_function"):
        refine_leastsq(features(), image, DIAMETER, fit_function="lorentz")
    with pytest.raises(ValueError, match="fit_function"):
        refine_leastsq(features(), image, DIAMETER, fit_function="inv_series_x")
    with pytest.raises(TypeError, match="fit_function"):
        refine_leastsq(features(), image, DIAMETER, fit_function=3)


def test_unknown_param_mode(image):
    with pytest.raises(ValueError, match="param_mode"):
        refine_leastsq(features(), image, DIAMETER, param_mode={"x": "free"})
    with pytest.raises(ValueError, match="param_mode"):
        refine_leastsq(features(), image, DIAMETER, param_mode={"spam": "var"})


@pytest.mark.parametrize("value", [0, -5, (15, 0), (-1, 9)])
@pytest.mark.parametrize("name", ["diameter", "separation"])
def test_non_positive_diameter_or_separation(image, name, value):
    kwargs = {"diameter": DIAMETER, name: value}
    with pytest.raises(ValueError, match=name):
        refine_leastsq(features(), image, **kwargs)


def test_diameter_with_wrong_length(image):
    with pytest.raises(ValueError, match="diameter"):
        refine_leastsq(features(), image, (15, 15, 15))


def test_missing_size_parameter(image):
    f = features().drop(columns="size")
    with pytest.raises(KeyError, match="size"):
        refine_leastsq(f, image, DIAMETER)
    out = refine_leastsq(f, image, DIAMETER, param_val={"size": SIZE})
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


# ---------------------------------------------------- special inputs

def test_empty_dataframe(image):
    f = features().iloc[:0]
    out = refine_leastsq(f, image, DIAMETER)
    assert len(out) == 0
    for col in ("cluster", "cluster_size", "cost"):
        assert col in out.columns
    for col in f.columns:
        assert col in out.columns


def test_empty_dataframe_with_movie():
    movie = np.stack([draw()] * 2)
    f = features(frame=0).iloc[:0]
    out = refine_leastsq(f, movie, DIAMETER)
    assert len(out) == 0
    assert {"cluster", "cluster_size", "cost"} <= set(out.columns)


def test_nan_pixels_are_ignored(image):
    holey = image.copy()
    # a few missing pixels inside each mask, one next to each centre
    for y, x in np.round(TRUTH).astype(int):
        holey[y + 1, x] = np.nan
        holey[y - 3, x + 2] = np.nan
        holey[y + 2, x - 4] = np.nan
    out = refine_leastsq(features(), holey, DIAMETER)
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


def _run_with_timeout(fn, timeout):
    result = {}

    def target():
        try:
            result["out"] = fn()
        except BaseException as exc:  # surfaced below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"refine_leastsq did not return in {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["out"], time.perf_counter() - start


@pytest.mark.parametrize("value", [0.0, 37.0])
@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_blank_image_gives_nan_cost_quickly(value, dtype):
    # compile for this dtype first, so that the timing sees only the fit
    refine_leastsq(features(), draw(signal=100.0).astype(dtype), DIAMETER)
    blank = np.full(SHAPE, value).astype(dtype)
    out, elapsed = _run_with_timeout(
        lambda: refine_leastsq(features(), blank, DIAMETER), timeout=120)
    assert out["cost"].isna().all()
    assert (out["status"] == BLANK).all()
    np.testing.assert_array_equal(positions(out), positions(features()))
    assert elapsed < 10


def test_fit_that_cannot_converge_gives_nan_cost(image):
    f = features(offset=(0.8, -0.7))
    out = refine_leastsq(f, image, DIAMETER, options={"maxiter": 2})
    assert out["cost"].isna().all()
    assert (out["status"] == MAX_ITER).all()
    # failed fits keep their initial parameters
    np.testing.assert_array_equal(positions(out), positions(f))
    np.testing.assert_array_equal(out["signal"], f["signal"])


def test_integer_position_columns(image):
    f = features()
    f["y"] = np.round(f["y"]).astype(np.int64)
    f["x"] = np.round(f["x"]).astype(np.int32)
    out = refine_leastsq(f, image, DIAMETER)
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


# ------------------------------------------------------------- readers

class _Movie(pims.FramesSequence):
    """Minimal pims reader over a list of arrays."""

    def __init__(self, frames):
        self._frames = [np.asarray(fr) for fr in frames]

    def __len__(self):
        return len(self._frames)

    @property
    def frame_shape(self):
        return self._frames[0].shape

    @property
    def pixel_type(self):
        return self._frames[0].dtype

    def get_frame(self, i):
        return pims.Frame(self._frames[i], frame_no=i)


def _layouts(image):
    """The same pixel values in many dtypes and memory layouts."""
    rounded = np.round(image)
    big = np.zeros((3 * SHAPE[0], 2 * SHAPE[1]))
    big[::3, ::2] = rounded
    flipped = rounded[::-1, ::-1].copy()
    layouts = {name: rounded.astype(name) for name in (
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64",
        "float16", "float32", "float64")}
    layouts.update({
        "big-endian u2": rounded.astype(">u2"),
        "big-endian i4": rounded.astype(">i4"),
        "big-endian f8": rounded.astype(">f8"),
        "fortran": np.asfortranarray(rounded.astype(np.uint16)),
        "fortran f8": np.asfortranarray(rounded),
        "strided": big[::3, ::2][::1, ::1],
        "negative strides": flipped[::-1, ::-1],
        "read-only": _read_only(rounded.astype(np.uint16)),
    })
    return layouts


def _read_only(array):
    array.flags.writeable = False
    return array


# fits the int8 range: background 20 + signal 100
READER_SIGNAL = 100.0
LAYOUTS = list(_layouts(np.zeros(SHAPE)))


@pytest.fixture(scope="module")
def reader_image():
    return draw(signal=READER_SIGNAL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_dtypes_and_layouts_give_same_positions(reader_image, layout):
    variant = _layouts(reader_image)[layout]
    copy64 = np.ascontiguousarray(variant, dtype=np.float64)
    np.testing.assert_array_equal(copy64, np.round(reader_image))
    reference = refine_leastsq(features(), copy64, DIAMETER)
    out = refine_leastsq(features(), variant, DIAMETER)
    assert np.isfinite(reference["cost"]).all()
    np.testing.assert_allclose(positions(out), positions(reference),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["cost"], reference["cost"], rtol=1e-9)
    np.testing.assert_allclose(positions(out), TRUTH, atol=NOISY_POS)


@pytest.mark.parametrize("dtype", ["bool", "int8", "int16", "uint32", "int32",
                                   "int64", "uint64", "float16", ">f8"])
def test_other_image_types_are_converted_exactly(dtype):
    """Types the mask kernel is not compiled for become one it is compiled
    for, and the kernel reads the same float64 values from it (the extremes
    of each type included)."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    values = [0, 1] if info is None else [info.min, info.max, 0, 1]
    image = np.resize(np.array(values, dtype=dtype), (4, 5))
    converted = as_kernel_image(image, 2)
    assert converted.dtype in (np.uint8, np.uint16, np.float32, np.float64)
    assert converted.flags.c_contiguous
    np.testing.assert_array_equal(converted.astype(np.float64),
                                  image.astype(np.float64))


@pytest.mark.parametrize("layout", ["uint16", "big-endian u2", "fortran"])
def test_movie_dtypes_and_layouts(layout):
    movie = np.stack([np.round(draw(positions=TRUTH + k)) for k in range(2)])
    f = features(np.r_[TRUTH, TRUTH + 1], frame=[0] * 3 + [1] * 3)
    reference = refine_leastsq(f, movie, DIAMETER)
    variant = {"uint16": movie.astype(np.uint16),
               "big-endian u2": movie.astype(">u2"),
               "fortran": np.asfortranarray(movie.astype(np.uint16))}[layout]
    out = refine_leastsq(f, variant, DIAMETER)
    np.testing.assert_allclose(positions(out), positions(reference),
                               rtol=0, atol=1e-9)


def test_pims_frame_single_image(image):
    frame = pims.Frame(image, frame_no=5)
    out = refine_leastsq(features(), frame, DIAMETER)
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)
    assert (out["frame"] == 5).all()
    out = refine_leastsq(features(frame=5), frame, DIAMETER)
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


def test_pims_frame_with_other_frame_number_raises(image):
    frame = pims.Frame(image, frame_no=5)
    with pytest.raises(ValueError, match="frame"):
        refine_leastsq(features(frame=3), frame, DIAMETER)


def test_pims_frames_sequence():
    truths = [TRUTH + np.array([k, -k]) * 0.7 for k in range(3)]
    reader = _Movie([draw(positions=t).astype(np.uint16) for t in truths])
    f = pd.concat([features(t, frame=k) for k, t in enumerate(truths)],
                  ignore_index=True)
    out = refine_leastsq(f, reader, DIAMETER)
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out), np.concatenate(truths),
                               atol=NOISY_POS)
    # a sliced reader (pims Slicerator) indexes its own frames
    sliced = reader[1:]
    f1 = features(truths[2], frame=1)
    out = refine_leastsq(f1, sliced, DIAMETER)
    np.testing.assert_allclose(positions(out), truths[2], atol=NOISY_POS)


def test_ndarray_movie_frames_on_axis_0():
    truths = [TRUTH + np.array([k, 0.5 * k]) for k in range(3)]
    movie = np.stack([draw(positions=t) for t in truths])
    f = pd.concat([features(t, frame=k) for k, t in enumerate(truths)],
                  ignore_index=True)
    # only frames 2 and 0 used, rows interleaved
    f = f[f["frame"] != 1].iloc[::-1]
    out = refine_leastsq(f, movie, DIAMETER)
    expected = np.concatenate([truths[0], truths[2]])[::-1]
    np.testing.assert_allclose(positions(out), expected, atol=EXACT_POS)


def test_3d_image_and_anisotropic_diameter():
    shape = (20, 30, 30)
    truth = np.array([[9.6, 12.3, 14.8], [10.2, 18.9, 16.1]])
    grid = np.indices(shape, dtype=float)
    sizes = np.array([2.5, 1.8, 1.8])
    image = np.full(shape, 5.0)
    for pos in truth:
        r2 = sum(((g - p) / s) ** 2 for g, p, s in zip(grid, pos, sizes))
        image += 100.0 * np.exp(-1.5 * r2)  # the 3D model: exp(-ndim/2 r2)
    f = pd.DataFrame({"z": truth[:, 0] + 0.3, "y": truth[:, 1] - 0.3,
                      "x": truth[:, 2] + 0.2, "signal": 80.0,
                      "size_z": 2.5, "size_y": 1.8, "size_x": 1.8})
    out = refine_leastsq(f, image, (13, 9, 9))
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out, ("z", "y", "x")), truth,
                               atol=EXACT_POS)


# ------------------------------------------------------- modes and bounds

def test_background_is_shared_within_a_cluster():
    pair = np.array([[20.3, 20.1], [23.4, 24.7]])
    img = draw(positions=np.r_[pair, [[35.0, 50.0]]], background=12.0)
    f = features(np.r_[pair, [[35.0, 50.0]]], background=[5.0, 30.0, 1.0])
    out = refine_leastsq(f, img, DIAMETER)
    assert list(out["cluster_size"]) == [2, 2, 1]
    assert out["cluster"][0] == out["cluster"][1] != out["cluster"][2]
    assert out["background"][0] == out["background"][1]
    np.testing.assert_allclose(out["background"], 12.0, atol=0.05)


def test_var_background_warns_and_uses_cluster_mode():
    pair = np.array([[20.3, 20.1], [23.4, 24.7]])
    img = draw(positions=pair, background=12.0)
    f = features(pair)
    with pytest.warns(UserWarning, match="background"):
        out = refine_leastsq(f, img, DIAMETER, param_mode={"background": "var"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = refine_leastsq(f, img, DIAMETER,
                                  param_mode={"background": "cluster"})
    pd.testing.assert_frame_equal(out, expected)
    assert out["background"][0] == out["background"][1]


def test_const_modes_keep_values(image):
    f = features()
    out = refine_leastsq(f, image, DIAMETER, param_mode={"signal": "const"})
    np.testing.assert_array_equal(out["signal"], f["signal"])
    assert (out["size"] == SIZE).all()  # size const by default


def test_pos_broadcast_in_param_mode(image):
    f = features()
    out = refine_leastsq(f, image, DIAMETER, param_mode={"pos": "const"})
    np.testing.assert_array_equal(positions(out), positions(f))
    assert not np.allclose(out["signal"], f["signal"])
    # a direct column entry wins over the broadcast
    out = refine_leastsq(f, image, DIAMETER,
                         param_mode={"pos": "const", "x": "var"})
    np.testing.assert_array_equal(out["y"], f["y"])
    np.testing.assert_allclose(out["x"], TRUTH[:, 1], atol=NOISY_POS)


def test_size_broadcast_in_param_mode_and_bounds(image):
    f = features(size_y=1.6, size_x=2.5).drop(columns="size")
    out = refine_leastsq(f, image, (15, 13), param_mode={"size": "var"})
    np.testing.assert_allclose(out[["size_y", "size_x"]], SIZE, atol=0.01)
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)
    # true sizes are 2.0: the broadcast bound pins size_y, size_x has its own
    out = refine_leastsq(f, image, (15, 13), param_mode={"size": "var"},
                         bounds={"size": (2.1, 2.3), "size_x": (1.5, 2.5)})
    np.testing.assert_allclose(out["size_y"], 2.1, rtol=1e-9)
    np.testing.assert_allclose(out["size_x"], SIZE, atol=0.05)
    out = refine_leastsq(f, image, (15, 13), param_mode={"size": "var"},
                         bounds={"size_abs": 0.1})
    np.testing.assert_allclose(out["size_y"], 1.7, rtol=1e-9)
    np.testing.assert_allclose(out["size_x"], 2.4, rtol=1e-9)
    # isotropic 'size' param_mode
    out = refine_leastsq(features(size=2.4), image, DIAMETER,
                         param_mode={"size": "var"})
    np.testing.assert_allclose(out["size"], SIZE, atol=0.01)


def test_pos_broadcast_in_bounds(image):
    f = features(offset=(0.5, -0.5))
    out = refine_leastsq(f, image, DIAMETER, bounds={"pos_abs": 0.1})
    shift = positions(out) - positions(f)
    assert np.all(np.abs(shift) <= 0.1 + 1e-12)
    np.testing.assert_allclose(np.abs(shift), 0.1, atol=1e-9)
    # a direct column entry wins over the broadcast
    out = refine_leastsq(f, image, DIAMETER,
                         bounds={"pos_abs": 0.1, "x_abs": 2.0})
    np.testing.assert_allclose(out["x"], TRUTH[:, 1], atol=NOISY_POS)
    assert np.all(np.abs(out["y"] - f["y"]) <= 0.1 + 1e-12)


@pytest.mark.parametrize("bounds,low,high", [
    ({"signal": (50.0, 130.0)}, 50.0, 130.0),                    # absolute
    ({"signal_abs": 10.0}, 110.0, 130.0),                         # one-sided
    ({"signal_abs": (30.0, 5.0)}, 90.0, 125.0),                   # two-sided
    ({"signal_rel": 1.1}, 120.0 / 1.1, 120.0 * 1.1),              # one-sided
    ({"signal_rel": (2.0, 1.05)}, 60.0, 126.0),                   # two-sided
    ({"signal": (0.0, 140.0), "signal_abs": 12.0, "signal_rel": 1.2},
     108.0, 132.0),                                               # narrowest
    ({"signal": (0.0, 128.0), "signal_abs": 12.0, "signal_rel": 1.2},
     108.0, 128.0),
])
def test_bound_forms(image, bounds, low, high):
    # initial signal 120, true 150: the upper bound holds the fit
    out = refine_leastsq(features(), image, DIAMETER, bounds=bounds)
    assert np.all(out["signal"] >= low - 1e-9)
    assert np.all(out["signal"] <= high + 1e-9)
    np.testing.assert_allclose(out["signal"], high, rtol=1e-9)


def test_lower_bound_holds(image):
    f = features(signal=200.0)
    out = refine_leastsq(f, image, DIAMETER, bounds={"signal_rel": (1.1, 2.0)})
    np.testing.assert_allclose(out["signal"], 200.0 / 1.1, rtol=1e-9)


def test_param_val_overrides_column(image):
    f = features(size=5.0)
    out = refine_leastsq(f, image, DIAMETER, param_val={"size": SIZE})
    assert (out["size"] == SIZE).all()
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)
    assert (f["size"] == 5.0).all()


@pytest.mark.parametrize("name", ["disc", "hat"])
def test_fit_function_defaults(image, name):
    out = refine_leastsq(features(), image, DIAMETER, fit_function=name)
    assert (out["disc_size"] == 0.5).all()
    out = refine_leastsq(features(), image, DIAMETER, fit_function=name,
                         param_val={"disc_size": 0.3})
    assert (out["disc_size"] == 0.3).all()


def test_ring_and_inv_series_defaults(image):
    out = refine_leastsq(features(), image, DIAMETER, fit_function="ring")
    assert (out["thickness"] == 0.2).all()
    out = refine_leastsq(features(), image, DIAMETER,
                         fit_function="inv_series_2")
    for col in ("signal_mult", "param_a", "param_b"):
        assert (out[col] == 1.0).all()


def test_residual_factor_is_accepted(image):
    expected = refine_leastsq(features(), image, DIAMETER)
    out = refine_leastsq(features(), image, DIAMETER, residual_factor=1.0)
    pd.testing.assert_frame_equal(out, expected)


def test_unknown_kwarg_raises_type_error(image):
    with pytest.raises(TypeError, match="spam"):
        refine_leastsq(features(), image, DIAMETER, spam=1)


def test_tol_and_options_accepted(image):
    out = refine_leastsq(features(), image, DIAMETER, tol=1e-8,
                         options={"maxiter": 200, "disp": False})
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


# ------------------------------------------------------------- re-centring

@pytest.mark.parametrize("offset", [(2.5, 0.0), (-2.0, 2.0), (0.0, -3.0)])
def test_recentring_converges_from_far_start(image, offset):
    f = features(offset=offset)
    out = refine_leastsq(f, image, DIAMETER, max_shift=1)
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(positions(out), TRUTH, atol=EXACT_POS)


def test_recentring_small_mask(image):
    """Radius 4 mask, initial position 3 px off: the first mask is lopsided."""
    f = features(offset=(3.0, 0.0))
    out = refine_leastsq(f, image, 9)
    np.testing.assert_allclose(positions(out), TRUTH, atol=NOISY_POS)


def test_recentring_drops_an_unmodelled_neighbour():
    """The first mask, 2.6 px off, holds a faint spot that is not a feature;
    the re-centred mask no longer does, and the fit becomes exact."""
    truth = np.array([[24.3, 30.4]])
    img = draw(positions=truth) + draw(positions=truth + [0.0, -6.5],
                                       signal=40.0, size=1.0, background=0.0)
    f = features(truth, offset=(0.0, -2.6))
    out = refine_leastsq(f, img, 9)
    np.testing.assert_allclose(positions(out), truth, atol=1e-3)
    # without re-centring the spot biases the fit
    once = refine_leastsq(f, img, 9, max_iter=1)
    assert np.abs(positions(once) - truth).max() > 0.01
