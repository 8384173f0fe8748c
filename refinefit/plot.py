"""Pictures of a refinement: one figure to judge whether the fits worked.

:func:`inspect_frame` draws one frame of a movie with its initial and
refined positions, the fitted model and the residual on the fit's masks,
histograms of the cost, of the sub-pixel parts of the positions and of the
standard errors, and the count of every status. :func:`model_image` gives
the model and residual images alone.

matplotlib is optional (``pip install 'refinefit[plot]'``): it is imported
only when a figure is drawn, never by ``import refinefit``, and the figure
is drawn with the Agg canvas, never through pyplot's global state.
"""
import numbers

import numpy as np
import pandas as pd

from .io.frames import as_kernel_image
from .kernels import evaluate_model
from .kernels.codes import CONVERGED
from .problem.models import resolve_model
from .problem.params import size_columns_for
from .solvers import custom_model
from .solvers.engine import flatten_masks
from .status import STATUS_KINDS, STATUS_NAMES, count_status, describe_status

__all__ = ["inspect_frame", "model_image"]

FIGSIZE = (14, 9)   # inches
DPI = 100           # the PNG is FIGSIZE * DPI pixels
BIAS_BINS = 20      # bins of the fractional positions over [0, 1)
HIST_BINS = 30      # bins of the cost and standard-error histograms
KIND_COLORS = {"converged": "tab:green", "stopped": "tab:orange",
               "failed": "tab:red", "degenerate": "tab:purple"}
OUTSIDE_COLOR = "#f5ecd7"  # pixels outside every mask (NaN)
# sigma of Gaussian noise from the median absolute deviation of the
# differences of neighbouring pixels (each difference has variance 2 sigma^2)
MAD_TO_SIGMA = 1.4826 / np.sqrt(2.0)


def _matplotlib():
    """``Figure`` and ``FigureCanvasAgg``, or an ImportError saying what to
    install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("refinefit.plot draws with matplotlib, which is not "
                          "installed: pip install 'refinefit[plot]'") from exc
    return Figure, FigureCanvasAgg


# ------------------------------------------------------------------ input

def _frame_image(frame):
    """The 2D frame as a kernel image; ValueError for anything else."""
    image = np.asarray(frame)
    if image.ndim != 2:
        raise ValueError(f"frame: inspect shows 2D frames; got an array of "
                         f"shape {image.shape}. Pass one 2D image, such as "
                         "frames[frame_no] (3D images are not shown)")
    return as_kernel_image(image, 2)


def _check_table(table, name):
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got "
                        f"{type(table).__name__}")


def _require(table, columns, name, hint):
    missing = [col for col in columns if col not in table]
    if missing:
        raise KeyError(f"{name} has no column(s) {missing} (columns: "
                       f"{[str(c) for c in table.columns]}); {hint}")


def _pos_columns(refined, pos_columns):
    if pos_columns is None:
        if "z" in refined:
            raise ValueError("refined has a 'z' column: inspect shows 2D "
                             "frames; pass pos_columns for 2D positions")
        pos_columns = ["y", "x"]
    pos_columns = list(pos_columns)
    if len(pos_columns) != 2:
        raise ValueError(f"pos_columns: inspect shows 2D frames and needs 2 "
                         f"position columns, got {pos_columns}")
    _require(refined, pos_columns, "refined", "pass pos_columns")
    return pos_columns


def _radius(diameter):
    """Mask radius per axis, ``diameter // 2``, as ``refine_leastsq``."""
    values = tuple(diameter) if np.ndim(diameter) else (diameter,) * 2
    if len(values) != 2 or not all(
            isinstance(v, numbers.Real) and v >= 2 for v in values):
        raise ValueError(f"diameter must be a number of at least 2 or a "
                         f"tuple of 2 such numbers, as given to "
                         f"refine_leastsq; got {diameter!r}")
    return tuple(float(v // 2) for v in values), len(set(values)) == 1


def _on_frame(refined, frame_no, t_column):
    """Boolean mask of the rows of frame ``frame_no`` and the frame number
    (``frame_no`` itself, or the table's only frame)."""
    if t_column not in refined:
        return np.ones(len(refined), dtype=bool), frame_no
    frames = refined[t_column].to_numpy()
    present = pd.unique(frames)
    if frame_no is None:
        if len(present) != 1:
            raise ValueError(f"frame_no: refined holds {len(present)} frames "
                             f"in column {t_column!r}; pass the frame_no of "
                             "the frame shown")
        frame_no = present[0]
    if not np.any(frames == frame_no):
        shown = ", ".join(str(f) for f in np.sort(present)[:10])
        raise ValueError(f"frame_no: frame {frame_no} is not in refined "
                         f"(column {t_column!r} holds frames {shown}"
                         f"{', ...' if len(present) > 10 else ''})")
    return frames == frame_no, frame_no


def _region(region, shape):
    """``(y0, y1, x0, x1)`` of the image panels: the whole frame, or the
    rows y0..y1 - 1 and columns x0..x1 - 1 asked for."""
    if region is None:
        return (0, shape[0], 0, shape[1])
    values = tuple(region)
    if len(values) != 4 or not all(isinstance(v, numbers.Integral)
                                   for v in values) or not (
            0 <= values[0] < values[1] <= shape[0]
            and 0 <= values[2] < values[3] <= shape[1]):
        raise ValueError(f"region must be (y0, y1, x0, x1) with 0 <= y0 < y1 "
                         f"<= {shape[0]} and 0 <= x0 < x1 <= {shape[1]} (the "
                         f"frame's shape), got {region!r}")
    return values


# ------------------------------------------------------------------ model

def _model_values(batch, params, model, n_size):
    """Model over the flattened batch and the pixels the fit ignores, as
    the solvers evaluate it."""
    if model.fun is not None:  # a custom function Numba cannot compile
        values, excluded, _ = custom_model.evaluate(model, batch, params, 2,
                                                    n_size)
        return values, excluded
    n_pix = len(batch.pix_val)
    values = np.empty(n_pix)
    excluded = np.empty(n_pix, dtype=bool)
    deriv = np.empty((len(batch.entry_pix), params.shape[1]))
    evaluate_model(batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
                   batch.feat_entry_off, batch.cluster_feat_off,
                   np.ascontiguousarray(params), 2, n_size, model.kernel_id,
                   model.continuous, values, excluded, deriv)
    return values, excluded


def model_image(frame, refined, diameter, *, frame_no=None,
                fit_function="gauss", pos_columns=None, t_column="frame"):
    """The fitted model and the residual of one 2D frame, on the fit's masks.

    Parameters
    ----------
    frame : ndarray (2D)
        The image of frame ``frame_no``.
    refined : DataFrame
        Output of :func:`refinefit.refine_leastsq` or
        :func:`refinefit.refine_movie`; rows of other frames are ignored.
    diameter : number or tuple of 2
        The ``diameter`` of the refinement: masks have radius
        ``diameter // 2`` per axis.
    frame_no : int, optional
        Frame shown; default: the only frame of ``refined``.
    fit_function, pos_columns, t_column
        As given to the refinement.

    Returns
    -------
    model : ndarray (2D float)
        The model of every cluster on its mask, NaN outside every mask.
    residual : ndarray (2D float)
        ``frame - model``, NaN outside every mask.
    inside_masks : ndarray (2D bool)
        The pixels that the model covers.

    Notes
    -----
    Only converged rows (status 0) are modelled, each cluster (column
    ``cluster``) as the solver evaluates it: the background of its first
    converged feature plus the terms of its converged features, each on its
    own mask around its refined position. The solver's last masks were
    centred on positions within ``max_shift`` of these, so the masks here
    may differ from the fit's by a pixel at their edges. NaN pixels of the
    frame and pixels a non-continuous model ignores (``ring``, within 1 px
    of a centre) are left out (NaN). Where masks of different clusters
    overlap (only with a ``separation`` below the diameter), the first
    cluster's model is shown.

    Examples
    --------
    >>> refined = refinefit.refine_leastsq(features, frames, 11)
    >>> model, residual, inside = model_image(frames[3], refined, 11,
    ...                                       frame_no=3)
    >>> np.sqrt(np.nanmean(residual ** 2))  # rms residual on the masks
    """
    image = _frame_image(frame)
    _check_table(refined, "refined")
    pos_columns = _pos_columns(refined, pos_columns)
    radius, isotropic = _radius(diameter)
    model = resolve_model(fit_function)
    names = (["background", "signal"] + pos_columns
             + list(size_columns_for(pos_columns, isotropic))
             + list(model.params))
    _require(refined, names + ["cluster", "status"], "refined",
             "pass the output of refine_leastsq with the fit_function and "
             "diameter of that call")
    on_frame, _ = _on_frame(refined, frame_no, t_column)
    rows = refined[on_frame & (refined["status"].to_numpy() == CONVERGED)]
    order = np.argsort(rows["cluster"].to_numpy(), kind="stable")
    params = rows[names].to_numpy(dtype=np.float64)[order]
    labels = rows["cluster"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) \
        if len(labels) else np.zeros(0, dtype=np.int64)
    cluster_feat_off = np.r_[starts, len(labels)].astype(np.int64)
    batch = flatten_masks([image], np.zeros(len(starts), dtype=np.int64),
                          cluster_feat_off,
                          np.ascontiguousarray(params[:, 2:4]), radius)
    values, excluded = _model_values(batch, params, model,
                                     len(names) - 4 - len(model.params))
    coords = batch.pix_coord[~excluded].astype(np.int64)
    flat = coords[:, 0] * image.shape[1] + coords[:, 1]
    pixels, first = np.unique(flat, return_index=True)
    model_values = np.full(image.shape, np.nan)
    model_values.flat[pixels] = values[~excluded][first]
    residual = image.astype(np.float64) - model_values
    return model_values, residual, np.isfinite(model_values)


# ------------------------------------------------------------------ numbers

def _noise_level(image):
    """Standard deviation of the pixel noise, robustly: from the median
    absolute deviation of horizontal neighbour differences (structure
    larger than a pixel barely moves the median)."""
    diff = np.diff(image.astype(np.float64), axis=1).ravel()
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return np.nan
    return float(MAD_TO_SIGMA * np.median(np.abs(diff - np.median(diff))))


def _fractional(values):
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    return values - np.floor(values)


def _status_counts(status):
    counts = count_status(status)
    return pd.Series({STATUS_NAMES[code]: int(n)
                      for code, n in enumerate(counts) if n}, dtype=np.int64)


def _panel_numbers(image, refined, features, on_frame, pos_columns):
    """Everything but the images: positions on the frame, histograms, status
    counts."""
    status = refined["status"].to_numpy().astype(np.int64)
    converged = status == CONVERGED
    positions = refined.loc[on_frame, pos_columns].copy()
    if features is not None:
        for col in pos_columns:
            positions[col + "_initial"] = features.loc[on_frame, col]
    positions["status"] = status[on_frame]
    positions["kind"] = [STATUS_KINDS[s] for s in status[on_frame]]

    cost = refined["cost"].to_numpy(dtype=np.float64)[converged]
    cost = cost[np.isfinite(cost)]
    counts, edges = np.histogram(cost, bins=HIST_BINS)
    median_cost = float(np.median(cost)) if len(cost) else np.nan

    bias_edges = np.linspace(0.0, 1.0, BIAS_BINS + 1)
    after = np.histogram(_fractional(
        refined.loc[converged, pos_columns].to_numpy()), bins=bias_edges)[0]
    before = None if features is None else np.histogram(_fractional(
        features.loc[converged, pos_columns].to_numpy()), bins=bias_edges)[0]

    std = {}
    std_columns = [col + "_std" for col in pos_columns if col + "_std" in refined]
    if std_columns:
        values = refined.loc[converged, std_columns].to_numpy(dtype=np.float64)
        std_edges = np.histogram_bin_edges(values[np.isfinite(values)],
                                           bins=HIST_BINS)
        for j, col in enumerate(std_columns):
            std[col] = {"counts": np.histogram(values[:, j], bins=std_edges)[0],
                        "edges": std_edges}

    with np.errstate(invalid="ignore"):
        frame_max = float(np.nanmax(image)) if np.isfinite(image).any() \
            else np.nan
    noise = _noise_level(image)
    return {"positions": positions,
            "cost": {"counts": counts, "edges": edges, "median": median_cost},
            "bias": {"edges": bias_edges, "before": before, "after": after},
            "std": std,
            "status": _status_counts(status),
            "summary": {"median_cost": median_cost, "noise": noise,
                        "frame_max": frame_max,
                        "noise_ratio": noise / frame_max if frame_max else np.nan,
                        "status": describe_status(count_status(status))}}


# ------------------------------------------------------------------ figure

def inspect_frame(frame, refined, diameter, *, features=None, frame_no=None,
                  fit_function="gauss", pos_columns=None, t_column="frame",
                  region=None, out=None):
    """One figure to judge a refinement: a frame, its fit, and the numbers.

    Parameters
    ----------
    frame : ndarray (2D)
        The image of frame ``frame_no`` (a pims Frame gives its
        ``frame_no``). 3D images are not shown.
    refined : DataFrame
        Output of :func:`refinefit.refine_leastsq` or
        :func:`refinefit.refine_movie`, of one frame or many.
    diameter : number or tuple of 2
        The ``diameter`` of the refinement (mask radius ``diameter // 2``).
    features : DataFrame, optional
        The input of the refinement (initial positions), with the same
        index as ``refined``.
    frame_no : int, optional
        Frame shown; default: the ``frame_no`` of a pims Frame, or the only
        frame of ``refined``.
    fit_function, pos_columns, t_column
        As given to the refinement.
    region : tuple of 4 int, optional
        ``(y0, y1, x0, x1)``: show only these rows and columns in the image
        panels (a zoom on a large frame); the numbers are those of the
        whole frame.
    out : str or path, optional
        Write the figure there; the format follows the extension (``.png``:
        ``FIGSIZE * DPI`` = 1400 x 900 pixels).

    Returns
    -------
    figure : matplotlib.figure.Figure
    panels : dict
        The numbers behind each panel:

        - ``'positions'``: DataFrame of the rows of the frame shown, with
          the refined positions, ``<pos>_initial`` (with ``features``),
          ``status`` and ``kind`` (converged, stopped, failed, degenerate);
        - ``'model'``, ``'residual'``, ``'inside_masks'``: as
          :func:`model_image` returns them;
        - ``'cost'``: ``counts``, ``edges`` and ``median`` of the finite
          costs of the converged rows;
        - ``'bias'``: ``edges`` (``BIAS_BINS`` bins over [0, 1)), ``before``
          (``features``; None without) and ``after`` (``refined``): counts
          of the fractional parts ``p - floor(p)`` of every position
          coordinate of the converged rows, all axes together;
        - ``'std'``: per ``<pos>_std`` column, ``counts`` and ``edges``
          over the converged rows (empty without ``compute_error``);
        - ``'status'``: Series of the rows per status name (nonzero only,
          by code);
        - ``'summary'``: ``median_cost``, ``noise`` (the frame's pixel
          noise, estimated), ``frame_max``, ``noise_ratio`` (``noise /
          frame_max``) and ``status`` (the counts in words).

    Raises
    ------
    ImportError
        Without matplotlib.
    ValueError, KeyError, TypeError
        For a frame that is not 2D, a ``frame_no`` that ``refined`` does
        not hold, missing columns or tables that are not DataFrames.

    Notes
    -----
    The frame, model and residual panels show the rows of ``frame_no``;
    the histograms and status counts count every row given, all frames.

    ``cost`` is the rms residual over a cluster's mask in units of the
    frame maximum. A fit that captures the features leaves only noise, so
    its cost is near ``noise_ratio``, the pixel noise (estimated from the
    differences of neighbouring pixels) over the frame maximum; a median
    cost well above it means the model misses the features' shape, and the
    residual panel shows where. The fractional parts of the positions
    should be flat after refinement: peaks at 0 and 1 (pixel locking) in
    the initial positions are the bias that refinement removes.

    Examples
    --------
    >>> features = trackpy.batch(frames, 11, minmass=100)
    >>> refined = refinefit.refine_leastsq(features, frames, 11)
    >>> figure, panels = inspect_frame(frames[0], refined, 11,
    ...                                features=features, frame_no=0,
    ...                                out="report.png")
    >>> panels["summary"]["median_cost"], panels["summary"]["noise_ratio"]
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if frame_no is None:
        frame_no = getattr(frame, "frame_no", None)
    model, residual, inside = model_image(
        frame, refined, diameter, frame_no=frame_no, fit_function=fit_function,
        pos_columns=pos_columns, t_column=t_column)
    image = np.asarray(frame, dtype=np.float64)
    pos_columns = _pos_columns(refined, pos_columns)
    _require(refined, ["cost"], "refined", "pass the output of refine_leastsq")
    if features is not None:
        _check_table(features, "features")
        _require(features, pos_columns, "features", "pass pos_columns")
        if not features.index.equals(refined.index):
            raise ValueError("features must have the same index as refined "
                             "(the table that the refinement was given)")
    on_frame, frame_no = _on_frame(refined, frame_no, t_column)
    region = _region(region, image.shape)
    panels = _panel_numbers(image, refined, features, on_frame, pos_columns)
    panels.update(model=model, residual=residual, inside_masks=inside)
    radius, _ = _radius(diameter)

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    top, middle, bottom = figure.subfigures(3, 1, height_ratios=[5.3, 3, 0.7])
    ax_frame, ax_model, ax_residual = top.subplots(1, 3)
    _draw_frame(top, ax_frame, image, panels["positions"], pos_columns, frame_no)
    _draw_model(top, ax_model, ax_residual, image, model, residual,
                panels["positions"], radius)
    for ax in (ax_frame, ax_model, ax_residual):
        ax.set_ylim(region[1] - 0.5, region[0] - 0.5)
        ax.set_xlim(region[2] - 0.5, region[3] - 0.5)
    ax_cost, ax_bias, ax_std, ax_status = middle.subplots(1, 4)
    _draw_cost(ax_cost, panels)
    _draw_bias(ax_bias, panels["bias"])
    _draw_std(ax_std, panels["std"])
    _draw_status(ax_status, panels["status"])
    _draw_summary(bottom, panels["summary"], frame_no, len(refined))
    if out is not None:
        figure.savefig(out, dpi=DPI)
    return figure, panels


def _draw_frame(figure, ax, image, positions, pos_columns, frame_no):
    y, x = pos_columns
    shown = ax.imshow(image, cmap="gray", interpolation="nearest")
    figure.colorbar(shown, ax=ax, shrink=0.6)
    if y + "_initial" in positions:
        ax.scatter(positions[x + "_initial"], positions[y + "_initial"],
                   marker="+", s=25, linewidths=0.8, color="tab:cyan",
                   label=f"initial ({len(positions)})")
    for kind, color in KIND_COLORS.items():
        rows = positions[positions["kind"] == kind]
        if len(rows):
            ax.scatter(rows[x], rows[y], marker="o", s=30, facecolors="none",
                       edgecolors=color, linewidths=1.0,
                       label=f"{kind} ({len(rows)})")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ax.set_title(f"frame {frame_no}: initial and refined positions"
                 if frame_no is not None else "initial and refined positions",
                 fontsize=10)


def _masked_cmap(name):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=OUTSIDE_COLOR)


def _draw_model(figure, ax_model, ax_residual, image, model, residual,
                positions, radius):
    n_modelled = int(np.sum(positions["kind"] == "converged"))
    with np.errstate(invalid="ignore"):
        low, high = np.nanmin(image), np.nanmax(image)
    shown = ax_model.imshow(model, cmap=_masked_cmap("gray"), vmin=low,
                            vmax=high, interpolation="nearest")
    figure.colorbar(shown, ax=ax_model, shrink=0.6)
    ax_model.set_title(f"model of the converged fits only ({n_modelled} of "
                       f"{len(positions)})\non masks of radius "
                       f"{radius[0]:g}, {radius[1]:g} px; pale: no mask",
                       fontsize=10)
    inside = residual[np.isfinite(residual)]
    limit = float(np.percentile(np.abs(inside), 99.5)) if len(inside) else 1.0
    shown = ax_residual.imshow(residual, cmap=_masked_cmap("RdBu_r"),
                               vmin=-limit, vmax=limit,
                               interpolation="nearest")
    figure.colorbar(shown, ax=ax_residual, shrink=0.6)
    rms = float(np.sqrt(np.mean(inside ** 2))) if len(inside) else np.nan
    ax_residual.set_title(f"residual: frame - model (converged fits only)\n"
                          f"rms {rms:.3g} on the masks; pale: no mask",
                          fontsize=10)


def _draw_cost(ax, panels):
    cost, summary = panels["cost"], panels["summary"]
    ax.stairs(cost["counts"], cost["edges"], fill=True, color="tab:green",
              alpha=0.7)
    if np.isfinite(cost["median"]):
        ax.axvline(cost["median"], color="k", linestyle="-", linewidth=1,
                   label=f"median {cost['median']:.3g}")
    if np.isfinite(summary["noise_ratio"]):
        ax.axvline(summary["noise_ratio"], color="tab:blue", linestyle="--",
                   linewidth=1, label=f"noise / max {summary['noise_ratio']:.3g}")
    ax.legend(fontsize=7)
    ax.set_xlabel("cost (rms residual / frame max)", fontsize=8)
    ax.set_ylabel("converged features", fontsize=8)
    ax.set_title("cost, all frames", fontsize=10)


def _draw_bias(ax, bias):
    edges = bias["edges"]
    if bias["before"] is not None:
        ax.stairs(bias["before"], edges, color="tab:cyan", linewidth=1.5,
                  label="initial")
    ax.stairs(bias["after"], edges, color="tab:green", linewidth=1.5,
              label="refined")
    ax.axhline(bias["after"].sum() / len(bias["after"]), color="0.5",
               linestyle=":", linewidth=1, label="flat (no bias)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("fractional part of y and x (px)", fontsize=8)
    ax.set_title("sub-pixel bias, converged features", fontsize=10)


def _draw_std(ax, std):
    if not std:
        ax.text(0.5, 0.5, "no standard errors:\nrefine with compute_error=True",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
        return
    for col, hist in std.items():
        ax.stairs(hist["counts"], hist["edges"], linewidth=1.5, label=col)
    ax.legend(fontsize=7)
    ax.set_xlabel("standard error (px)", fontsize=8)
    ax.set_title("position standard errors, converged", fontsize=10)


def _draw_status(ax, counts):
    codes = {name: code for code, name in STATUS_NAMES.items()}
    names = list(counts.index)[::-1]
    colors = [KIND_COLORS[STATUS_KINDS[codes[name]]] for name in names]
    bars = ax.barh(names, counts[names].to_numpy(), color=colors)
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts[names]], fontsize=7,
                 padding=2)
    ax.margins(x=0.2)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("features, all frames", fontsize=8)
    ax.set_title("how the fits ended (status)", fontsize=10)


def _draw_summary(subfigure, summary, frame_no, n_rows):
    at = "" if frame_no is None else f" of frame {frame_no}"
    text = (f"{n_rows:,} features: {summary['status']}.\n"
            f"Median cost {summary['median_cost']:.3g}; pixel noise{at} / "
            f"its maximum \u2248 {summary['noise_ratio']:.3g} (estimated from "
            "neighbouring pixels). cost is the rms residual over a cluster's "
            "mask in units of the frame maximum:\na fit that leaves only noise "
            "has a cost near noise / maximum; a cost well above it means the "
            "model misses the features' shape (see the residual).")
    subfigure.text(0.01, 0.5, text, ha="left", va="center", fontsize=9)
