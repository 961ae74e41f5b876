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


def plot_metric(
    path: Path, metric: str, rows: list[Row], columns: Columns, labels: list[str], methods: list[str], paper: list
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
    axes.set_title(f"{metric} (mean ± std over seeds)")
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
