"""The report's figures: one plot per metric and a grid of the runs' output images.

matplotlib is imported here, inside the functions, and drawn through the Agg canvas directly (no pyplot),
so a headless machine needs no display and ``csd-exp-report`` starts without paying for the import
when only the table is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from csd_exp.report.table import Columns, Row

# Output images are shrunk to this many pixels on their long side: enough to judge an edit, and a sweep
# of dozens of 3D turntable grids still gives a PNG of a few MB.
THUMBNAIL_PX = 512
CELL_WIDTH_IN = 3.2
LABEL_WIDTH_IN = 2.6


def plot_name(metric: str) -> str:
    """``fidelity/psnr`` -> ``report_fidelity_psnr.png`` (any other character unsafe in a file name too)."""
    return "report_" + re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".png"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def line_key(rows: list[Row], columns: Columns) -> str | None:
    """The one swept key to put on an x axis: only when there is exactly one and every row has a number."""
    if len(columns.keys) != 1:
        return None
    key = columns.keys[0]
    numeric = all(isinstance(row.values[key], (int, float)) and not isinstance(row.values[key], bool) for row in rows)
    return key if numeric else None


def with_caution(title: str, caution: str | None) -> str:
    """A plot title with the report's confounders under it (``confounded: frames, size_px``)."""
    return f"{title}\n{caution}" if caution else title


def plot_metric(
    path: Path,
    metric: str,
    rows: list[Row],
    columns: Columns,
    labels: list[str],
    methods: list[str],
    paper: list,
    caution: str | None = None,
) -> bool:
    """Mean ± std of ``metric`` per row: a line per method against the one numeric swept key, else a bar per
    row. ``labels`` / ``methods`` / ``paper`` hold each row's full label, method label and paper number (or
    None). False (nothing written) when no row has the metric."""
    stats = [row.stat(metric) for row in rows]
    if all(result.mean is None for result in stats):
        return False
    key = line_key(rows, columns)
    if key is not None:
        figure = _figure(6.4, 4.2)
        axes = figure.add_subplot()
        series: dict[str, list[int]] = {}
        for index, method in enumerate(methods):
            series.setdefault(method, []).append(index)
        for method, members in series.items():
            points = sorted(
                (float(rows[i].values[key]), stats[i], paper[i]) for i in members if stats[i].mean is not None
            )
            if not points:
                continue
            x = [point[0] for point in points]
            y = [point[1].mean for point in points]
            err = [point[1].std or 0.0 for point in points]
            drawn = axes.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
            numbers = {value for *_, value in points if value is not None}
            if len(numbers) == 1:
                axes.axhline(numbers.pop(), linestyle="--", color=drawn[0].get_color(), label=f"{method} (paper)")
        axes.set_xlabel(columns.names[key])
        axes.legend(fontsize="small")
    else:
        figure = _figure(max(4.0, 0.7 * len(rows) + 2.0), 4.6)
        axes = figure.add_subplot()
        shown = [i for i, result in enumerate(stats) if result.mean is not None]
        positions = list(range(len(shown)))
        axes.bar(
            positions,
            [stats[i].mean for i in shown],
            yerr=[stats[i].std or 0.0 for i in shown],
            capsize=3,
            color="tab:blue",
            label="ours",
        )
        marked = [(position, paper[i]) for position, i in zip(positions, shown) if paper[i] is not None]
        if marked:
            axes.scatter(*zip(*marked), marker="D", color="black", zorder=3, label="paper")
            axes.legend(fontsize="small")
        axes.set_xticks(positions, [labels[i] for i in shown], rotation=30, ha="right", fontsize="small")
    axes.set_ylabel(metric)
    axes.set_title(with_caution(f"{metric} (mean ± std over seeds)", caution), fontsize="medium")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return True


def _thumbnail(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        return np.asarray(image)


def image_grid(path: Path, rows: list[Row], labels: list[str]) -> bool:
    """Rows = the table's rows, columns = their runs by seed, each cell titled with its seed. False (nothing
    written) when no run has an output image."""
    cells = [[run.image() for run in row.runs] for row in rows]
    if not any(image for images in cells for image in images):
        return False
    pictures = {image: _thumbnail(image) for images in cells for image in images if image}
    aspects = sorted(picture.shape[1] / picture.shape[0] for picture in pictures.values())
    aspect = aspects[len(aspects) // 2]
    cell_height = min(max(CELL_WIDTH_IN / aspect, 0.8), 4.0) + 0.35  # room for the seed title
    columns = max(len(images) for images in cells)
    figure = _figure(LABEL_WIDTH_IN + columns * CELL_WIDTH_IN, len(rows) * cell_height)
    grid = figure.add_gridspec(len(rows), columns)
    for r, (row, images) in enumerate(zip(rows, cells)):
        for c in range(columns):
            axes = figure.add_subplot(grid[r, c])
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if c == 0:
                axes.set_ylabel(labels[r].replace(", ", "\n"), rotation=0, ha="right", va="center", fontsize="small")
            if c >= len(images):
                continue
            run = row.runs[c]
            axes.set_title(f"seed {run.seed}" if run.seed is not None else run.folder.name, fontsize="small")
            if images[c] is None:
                axes.text(0.5, 0.5, "no image", ha="center", va="center", transform=axes.transAxes)
            else:
                axes.imshow(pictures[images[c]])
    figure.savefig(path, dpi=100)
    return True


def scatter_plot(
    path: Path,
    rows: list[Row],
    columns: Columns,
    methods: list[str],
    x_metric: str,
    y_metric: str,
    caution: str | None = None,
) -> bool:
    """``y_metric`` against ``x_metric`` (means ± std), one curve per method through its rows in order of the
    one numeric swept key, each point marked with that key's value (the paper's Fig. 5 / Fig. 8). False
    (nothing written) when no row has both."""
    points: dict[str, list[tuple]] = {}
    key = line_key(rows, columns)
    for row, method in zip(rows, methods):
        x, y = row.stat(x_metric), row.stat(y_metric)
        if x.mean is None or y.mean is None:
            continue
        order = float(row.values[key]) if key else len(points.get(method, []))
        mark = f"{columns.names[key]}={row.values[key]:g}" if key else ""
        points.setdefault(method, []).append((order, x, y, mark))
    if not points:
        return False
    figure = _figure(6.4, 4.8)
    axes = figure.add_subplot()
    for method, series in points.items():
        series.sort(key=lambda point: point[0])
        xs = [point[1].mean for point in series]
        ys = [point[2].mean for point in series]
        axes.errorbar(
            xs,
            ys,
            xerr=[point[1].std or 0.0 for point in series],
            yerr=[point[2].std or 0.0 for point in series],
            marker="o",
            capsize=3,
            label=method,
        )
        for x, y, (*_, mark) in zip(xs, ys, series):
            if mark:
                axes.annotate(mark, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    axes.set_xlabel(x_metric)
    axes.set_ylabel(y_metric)
    axes.set_title(with_caution(f"{y_metric} against {x_metric} (mean ± std)", caution), fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return True


def paper_bars(
    path: Path,
    metrics: list[str],
    rows: list[Row],
    labels: list[str],
    paper: dict,
    absent: dict[str, str | None],
    title: str | None = None,
) -> bool:
    """A panel per metric: a bar per row (ours, mean ± std) beside the paper's number (hatched) where it gives
    one; a metric no run has shows only the paper's bars and says what it needs (``absent``). ``paper``
    maps (row index, metric) -> number. False (nothing written) when there is nothing to draw."""
    drawn = [
        metric
        for metric in metrics
        if any(row.stat(metric).mean is not None or (i, metric) in paper for i, row in enumerate(rows))
    ]
    if not drawn or not rows:
        return False
    width = 0.38
    figure = _figure(max(4.0, 1.1 * len(rows) + 1.5) * len(drawn), 4.4)
    for panel, metric in enumerate(drawn, start=1):
        axes = figure.add_subplot(1, len(drawn), panel)
        positions = list(range(len(rows)))
        stats = [row.stat(metric) for row in rows]
        ours = [(i, result) for i, result in enumerate(stats) if result.mean is not None]
        if ours:
            axes.bar(
                [i - width / 2 for i, _ in ours],
                [result.mean for _, result in ours],
                width,
                yerr=[result.std or 0.0 for _, result in ours],
                capsize=3,
                color="tab:blue",
                label="ours",
            )
        else:
            axes.text(
                0.5, 0.92, f"ours: {absent.get(metric) or 'no run has it'}", ha="center", transform=axes.transAxes
            )
        theirs = [(i, paper[(i, metric)]) for i in positions if (i, metric) in paper]
        if theirs:
            axes.bar(
                [i + width / 2 for i, _ in theirs],
                [value for _, value in theirs],
                width,
                color="white",
                edgecolor="black",
                hatch="//",
                label="paper",
            )
        axes.set_xticks(positions, labels, rotation=30, ha="right", fontsize="small")
        axes.set_title(metric, fontsize="small")
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="small")
    figure.savefig(path, dpi=110)
    return True
