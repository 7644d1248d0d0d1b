"""The report's figures, drawn on Agg canvases (no display, no global pyplot state).

* :func:`figure10`: MS-SSIM(clean, attacked reconstruction) against k, a row of
  panels per (dataset, norm, eps) and a column per view (mean / worst case over
  restarts), drawn from the results table: a line per model with the table's 95 %
  bootstrap intervals over points as error bars, floor and noise as reference lines;
* :func:`layers_figure`: KL and active units per layer and model;
* :func:`gallery_figure`: x, x + delta, delta (magnified, scale in the title) and both
  reconstructions for a few points per k.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from robustvae.records import selection
from robustvae.reporting.aggregate import CI_LEVEL, VIEWS
from robustvae.reporting.load import CURVE_SEP, PANEL_KEYS, GalleryEntry

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DODGE = 0.08  # k units between neighbouring models' curves in a panel where two of them coincide
COINCIDE = 0.01  # MS-SSIM: curves closer than this at every k would hide one another


class PlainTextFigure(Figure):
    """A figure whose texts are drawn as written: a name from a file or record (a model called ``$\\foo$``, an
    image ``$\\frac{a$.png``) never goes through mathtext, where it could fail or be rendered as a formula.

    Tick labels that matplotlib's own formatters write as math (``$\\mathdefault{10^{-1}}$``) keep it.
    """

    def draw(self, renderer):  # noqa: ANN001 - matplotlib's signature
        for text in self.findobj(Text):
            s = text.get_text()
            if "$" in s and not s.startswith("$\\mathdefault"):
                text.set_parse_math(False)
        super().draw(renderer)


def dropped_note(table: pd.DataFrame, what: str) -> str:
    """``"; N <what> left out"`` for a figure's title when the table counts non-finite rows it could not draw."""
    dropped = int(table.nonfinite.sum()) if "nonfinite" in table else 0
    return f"; {dropped} {what} left out" if dropped else ""


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: nothing touches pyplot's global state or a display; text is plain."""
    fig = PlainTextFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 130) -> bytes:
    """The figure as PNG bytes (written to disk and embedded in the HTML as a data URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def panel_title(dataset: str, norm: str, eps: float, recon: str = "default") -> str:
    """E.g. ``mnist, L-inf eps = 0.1`` (``, authors' rule`` for a non-default reconstruction rule)."""
    rule = "" if recon == "default" else f", {recon} rule"
    return f"{dataset}, {'L-inf' if norm == 'linf' else 'L2'} eps = {eps:g}{rule}"


def palette(models: Sequence[str]) -> dict[str, tuple]:
    """One colour per model, fixed by the sorted model names so every figure agrees."""
    return dict(zip(models, sns.color_palette("colorblind", len(models))))


def marker_map(models: Sequence[str]) -> dict[str, str]:
    """One marker per model (cycling through :data:`MARKERS`), in the order given."""
    return dict(zip(models, MARKERS * (len(models) // len(MARKERS) + 1)))


def _y_bottom(table: pd.DataFrame) -> float:
    """One y range for all panels: from the lowest interval end or baseline down to the next tenth."""
    drawn = table[
        [c for c in ("mean", "mean_lo", "worst", "worst_lo", "noise", "floor", "no_attack") if c in table]
    ].to_numpy(float)
    lowest = np.nanmin(drawn) if np.isfinite(drawn).any() else 0.0
    return max(0.0, np.floor((lowest - 0.02) * 10) / 10)


def _curve(ax: Axes, g: pd.DataFrame, view: str, colour: tuple, marker: str, dodge: float = 0.0) -> None:
    """One model's line of a view against k (shifted by ``dodge`` along k, so equal curves stay visible side by
    side), its interval from the table as error bars."""
    g = g[g[view].notna()]
    if g.empty:
        return
    x = g.k + dodge
    (line,) = ax.plot(x, g[view], color=colour, marker=marker, markersize=7, markeredgewidth=0.75, markeredgecolor="w")
    bars = ax.errorbar(
        x, g[view], yerr=(g[view] - g[f"{view}_lo"], g[f"{view}_hi"] - g[view]), linestyle="", color=colour, capsize=3
    )
    for obj in bars.get_children():
        if isinstance(obj, LineCollection):
            obj.set_capstyle(line.get_solid_capstyle())


def _coincide(curves: list[pd.Series]) -> bool:
    """Whether two curves (values by k) lie within :data:`COINCIDE` of each other at every k they share."""
    for i, a in enumerate(curves):
        for b in curves[i + 1 :]:
            both = pd.concat([a, b], axis=1, join="inner").dropna()
            if len(both) and float((both.iloc[:, 0] - both.iloc[:, 1]).abs().max()) < COINCIDE:
                return True
    return False


def _panel(ax: Axes, base: pd.DataFrame, view: str, colours: dict[str, tuple], markers: dict[str, str]) -> None:
    """A panel's curves (every model of ``base``, a table's rows of one panel), then noise (dashed) and floor (dotted)."""
    curves = {model: g.sort_values("k") for model, g in base.groupby("model")}
    step = DODGE if _coincide([g.set_index("k")[view] for g in curves.values()]) else 0.0
    for i, model in enumerate(colours):
        if model in curves:
            _curve(ax, curves[model], view, colours[model], markers[model], dodge=step * (i - (len(colours) - 1) / 2))
    for model, g in curves.items():
        ax.plot(g.k, g.noise, ls="--", lw=1.2, color=colours[model], alpha=0.8)
        ax.plot(g.k, g.floor, ls=":", lw=1.4, color=colours[model], alpha=0.8)
        if "no_attack" in g and (g.no_attack < 0.999).any():  # under the default rule it is 1: nothing to draw
            ax.plot(g.k, g.no_attack, ls="-.", lw=1.2, color=colours[model], alpha=0.8)


def curve_label(table: pd.DataFrame, model: str) -> str:
    """A curve's legend entry: its name with the attack (and ensemble version) behind it, unless the name says it."""
    attacks = table.loc[table.model == model, "attack"].dropna().unique() if "attack" in table else []
    missing = [str(a) for a in attacks if str(a) not in model]
    return f"{model}{CURVE_SEP}{', '.join(missing)}" if missing else model


def figure10(table: pd.DataFrame) -> Figure:
    """Figure 10 from the results table: per panel, the mean and worst case over restarts against k, a line per model.

    Points, error bars (the table's ``_lo`` / ``_hi``), noise and floor are the table's
    numbers: nothing is aggregated or resampled here.
    """
    models = sorted(table.model.unique())
    colours = palette(models)
    markers = marker_map(models)
    panels = list(table.groupby(PANEL_KEYS).groups)
    bottom = _y_bottom(table)
    fig = new_figure(11, 3.9 * len(panels) + 0.8)
    axes = fig.subplots(len(panels), 2, squeeze=False, sharey=True)
    for row, panel in enumerate(panels):
        base = table[(table[PANEL_KEYS] == pd.Series(dict(zip(PANEL_KEYS, panel)))).all(axis=1)]
        for col, (view, label) in enumerate(VIEWS.items()):
            ax = axes[row, col]
            _panel(ax, base, view, colours, markers)
            ax.set_title(f"{panel_title(*panel)}\n{label}", fontsize=10)
            ax.set_xlabel("k = top latent layers under attack")
            ax.set_ylabel("MS-SSIM(clean rec., attacked rec.)" if col == 0 else "")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom - 0.01, 1.01)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker=markers[m], label=curve_label(table, m)) for m in models]
    handles += [
        Line2D([], [], color="grey", ls="--", label="noise of the same budget"),
        Line2D([], [], color="grey", ls=":", label="floor: clean vs clean, other prior noise"),
    ]
    if "no_attack" in table and (table.no_attack < 0.999).any():
        handles.append(Line2D([], [], color="grey", ls="-.", label="no-attack level under the same rule"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    note = dropped_note(table, "row(s) with non-finite scores")
    fig.suptitle(
        f"MS-SSIM between clean and attacked reconstruction (lower = more damage); "
        f"{CI_LEVEL} % bootstrap interval over points{note}",
        fontsize=11,
    )
    return fig


def _grouped_bars(
    ax: Axes, frame: pd.DataFrame, y: str, models: list[str], colours: dict[str, tuple], hatch_kind: str | None = None
) -> None:
    """Bars of ``y`` per layer, one per model side by side; rows of kind ``hatch_kind`` hatched (another quantity).

    A value of exactly 0 is a flat dash on the axis (a bar of height 0 would not show); a layer
    without a value (not applicable, or not in that model) is written "n/a".
    """
    layers = sorted(frame.layer.unique())
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        g = frame[frame.model == m].set_index("layer").reindex(layers)
        xs = np.arange(len(layers)) + (i - (len(models) - 1) / 2) * width
        hatched = (g.kind == hatch_kind).to_numpy() if hatch_kind else np.zeros(len(layers), bool)
        for x, v, h in zip(xs, g[y].to_numpy(float), hatched):
            if not np.isfinite(v):
                ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
            elif v == 0:
                ax.plot([x], [0], marker="_", markersize=max(4.0, 60 * width), markeredgewidth=3, color=colours[m])
            else:
                ax.bar(x, v, width, color=colours[m], hatch="//" if h else None, edgecolor="w" if h else None)
    ax.set_xticks(np.arange(len(layers)), [str(int(v)) for v in layers])
    ax.set_xlabel("layer (1 = top)")
    ax.grid(axis="y", alpha=0.3)


def layers_figure(diag: pd.DataFrame, atlas: pd.DataFrame | None = None) -> Figure:
    """The layer atlas: per layer, KL, utilisation and (per panel) the marginal damage of attacking it, a bar per model.

    Utilisation is the fraction of active units for Gaussian layers and the mean
    fraction of quantiser levels used for a context layer (hatched: a different
    quantity, not "no active units"); 0 is a dash on the axis, a layer without a number "n/a".
    """
    models = sorted(diag.model.unique())
    colours = palette(models)
    use = diag.assign(
        utilisation=np.where(
            diag.kind == "context",
            pd.to_numeric(diag.levels_used, errors="coerce") / pd.to_numeric(diag.levels, errors="coerce"),
            diag.active_fraction,
        )
    )
    panels = [] if atlas is None or atlas.empty else list(atlas.groupby(PANEL_KEYS, sort=True))
    fig = new_figure(11 if not panels else 4.8 * (2 + len(panels)), 3.8)
    axes = fig.subplots(1, 2 + len(panels), squeeze=False)[0]
    _grouped_bars(axes[0], use, "kl_nats", models, colours)
    axes[0].set_title("KL per layer (nats; DCT-VAE layer 1:\nthe context's diffusion bound)", fontsize=9)
    axes[0].set_ylabel("KL (nats)")
    _grouped_bars(axes[1], use, "utilisation", models, colours, hatch_kind="context")
    axes[1].set_title("active fraction of units (hatched: context,\nfraction of quantiser levels used)", fontsize=9)
    axes[1].set_ylim(0, 1.05)
    # the damage panels have a bar per curve of Figure 10 (a model under several attacks has several), in its colours
    curves = sorted(atlas.model.unique()) if panels else []
    curve_colours = palette(curves)
    for ax, (panel, g) in zip(axes[2:], panels):
        ax.axhline(0, color="grey", lw=0.8)
        _grouped_bars(ax, g, "marginal", [m for m in curves if m in set(g.model)], curve_colours)
        ax.set_title(f"{panel_title(*panel)}\nmarginal damage: drop at k = l minus at k = l - 1", fontsize=9)
        ax.set_ylabel("change of paired MS-SSIM drop")
    handles = [Patch(color=colours[m], label=m) for m in models]
    handles += [Patch(color=curve_colours[c], label=c) for c in curves if c not in colours]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    return fig


def imshow_array(a: np.ndarray) -> np.ndarray:
    """C x H x W in [0, 1] -> what imshow takes (H x W for one channel)."""
    a = np.clip(a, 0, 1)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def worst_examples(entries: list[GalleryEntry], per_k: int) -> list[tuple[GalleryEntry, int]]:
    """Per (panel, k), the ``per_k`` saved examples with the strongest attack, strongest first: the lowest MS-SSIM
    (the largest damage), or in a targeted run's gallery the highest MS-SSIM to the target's reconstruction."""
    groups: dict[tuple, list[tuple[GalleryEntry, int]]] = {}
    for e in sorted(entries, key=lambda e: (e.dataset, e.norm, e.eps, e.k)):
        groups.setdefault((e.dataset, e.norm, e.eps, e.k), []).extend((e, i) for i in range(len(e.arrays["points"])))

    def key(ei: tuple[GalleryEntry, int]) -> float:
        sel = selection("msssim_target" in ei[0].arrays)
        return np.nan_to_num(sel.sign * float(ei[0].arrays[sel.column][ei[1]]), nan=2.0)

    return [ei for group in groups.values() for ei in sorted(group, key=key)[:per_k]]


def gallery_figure(entries: list[GalleryEntry], per_k: int = 2) -> Figure:
    """One model's worst-restart examples of its most damaged points: a row per (panel, k, point), five columns."""
    several = len({(e.dataset, e.norm, e.eps) for e in entries}) > 1
    rows = worst_examples(entries, per_k)
    deltas = [e.arrays["x_adv"][i] - e.arrays["x"][i] for e, i in rows]
    biggest = max((float(np.abs(d).max()) for d in deltas), default=0.0) or 1.0
    scale = 0.5 / biggest
    targeted = all("rec_target" in e.arrays for e, _ in rows) and bool(rows)  # a targeted run: its target too
    fig = new_figure(6.0 + 1.2 * targeted, 1.2 * len(rows) + 0.8)
    axes = fig.subplots(len(rows), 5 + targeted, squeeze=False)
    titles = [
        "x",
        "x + delta",
        f"delta x {scale:.3g} + 0.5\n(grey = 0; max |delta| {biggest:.3g})",
        "rec(x)",
        "rec(x + delta)",
        "rec(target)",
    ]
    for r, ((e, i), d) in enumerate(zip(rows, deltas)):
        a = e.arrays
        cells = [a["x"][i], a["x_adv"][i], d * scale + 0.5, a["rec"][i], a["rec_adv"][i]]
        cells += [a["rec_target"][i]] if targeted else []
        for c, img in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(imshow_array(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
        where = f"eps {e.eps:g}, " if several else ""
        to_target = f"\nto target {float(a['msssim_target'][i]):.3f}" if targeted else ""
        axes[r, 0].set_ylabel(
            f"{where}k={e.k}, point {int(a['points'][i])}\nMS-SSIM {float(a['msssim'][i]):.3f}{to_target}", fontsize=8
        )
    what = "closest to their targets, strongest restart" if targeted else "most damaged points, worst restart"
    fig.suptitle(f"{entries[0].model}: the {what} of each", fontsize=10)
    return fig
