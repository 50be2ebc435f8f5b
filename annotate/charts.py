"""Server-side SVG charts: no JavaScript, no network, readable when printed.

Every label and value is escaped here, so the returned markup is safe to place in a template
as is (the only place ``mark_safe`` is used on chart output).
"""

from __future__ import annotations

import math

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

FONT = 'font-family="system-ui, sans-serif" font-size="12"'
MUTED = "#5d6678"
LINE = "#dfe3ec"
BLUE = "#2f5bd3"
RED = "#c0392b"
GOLD = "#b8860b"


def _svg(width: float, height: float, body: list[str], title: str) -> SafeString:
    return mark_safe(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{escape(title)}" {FONT}>'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _axis_title(x: float, y: float, text: str, *, vertical: bool = False) -> str:
    """An axis's name (and unit), read from below the axis or, rotated, from beside it."""
    turn = f' transform="rotate(-90 {x:.0f} {y:.0f})"' if vertical else ""
    return (
        f'<text class="axis-title" x="{x:.0f}" y="{y:.0f}" text-anchor="middle" fill="{MUTED}"{turn}>'
        f"{escape(text)}</text>"
    )


def _vertical_middle(middle: float, text: str) -> float:
    """Where a rotated axis title is centred so that it does not run off the top; a chart whose matrix is shorter
    than its title grows to hold the rest (about 6.8 pixels a letter at 12 pixels)."""
    return max(middle, len(text) * 3.4 + 2)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _diverging(value: float | None) -> str:
    """Blue for agreement, red for worse than chance, white near zero; grey when undefined."""
    if value is None:
        return "#eef1f7"
    v = max(-1.0, min(1.0, value))
    if v >= 0:
        r, g, b = (int(255 - (255 - c) * v) for c in (47, 91, 211))
    else:
        r, g, b = (int(255 - (255 - c) * -v) for c in (192, 57, 43))
    return f"rgb({r},{g},{b})"


def _sequential(value: float, top: float) -> str:
    share = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    r, g, b = (int(255 - (255 - c) * share) for c in (47, 91, 211))
    return f"rgb({r},{g},{b})"


def _text_color(fill_share: float) -> str:
    return "#fff" if fill_share > 0.55 else "#1d2330"


def heatmap(
    matrix: list[list[float | None]], labels: list[str], *, title: str, counts=None, axis: str = "Reviewer"
) -> SafeString:
    """A reviewer × reviewer matrix (kappa or agreement), one coloured cell each, value printed inside."""
    n = len(labels)
    cell, left, top = 44, 126, 116
    middle = _vertical_middle(top + n * cell / 2, axis)
    width, height = left + n * cell + 80, max(top + n * cell + 10, middle + len(axis) * 3.4 + 2)
    body = [_axis_title(left + n * cell / 2, 14, axis), _axis_title(14, middle, axis, vertical=True)]
    for i, label in enumerate(labels):
        y = top + i * cell + cell / 2 + 4
        x = left + i * cell + cell / 2
        body.append(f'<text x="{left - 6}" y="{y:.0f}" text-anchor="end">{escape(label[:16])}</text>')
        body.append(f'<text transform="translate({x:.0f},{top - 6}) rotate(-45)">{escape(label[:16])}</text>')
    for i in range(n):
        for j in range(n):
            value = matrix[i][j] if i != j else None
            x, y = left + j * cell, top + i * cell
            fill = "#f6f7fb" if i == j else _diverging(value)
            tip = f"{labels[i]} × {labels[j]}: {_fmt(value)}"
            if counts is not None and i != j:
                tip += f" on {counts[i][j]} shared items"
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" rx="3">'
                f"<title>{escape(tip)}</title></rect>"
            )
            if i != j:
                color = _text_color(abs(value) if value is not None else 0)
                body.append(
                    f'<text x="{x + cell / 2 - 1:.0f}" y="{y + cell / 2 + 3:.0f}" text-anchor="middle" '
                    f'fill="{color}">{escape(_fmt(value))}</text>'
                )
    return _svg(width, height, body, title)


def bars_with_ci(
    rows: list[dict],
    *,
    title: str,
    axis: str,
    lo: float = 0.0,
    hi: float = 1.0,
    thresholds: list[tuple[float, str]] = (),
) -> SafeString:
    """Horizontal bars with confidence whiskers; rows are {label, value, low, high}; ``axis`` names the
    value axis and its unit."""
    values = [v for r in rows for v in (r.get("value"), r.get("low")) if v is not None]
    lo = min([lo, *values]) if values else lo
    bar_h, left, top, plot_w = 26, 150, 24, 380
    height = top + len(rows) * bar_h + 48
    width = left + plot_w + 70

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    bottom = height - 42
    body = [
        f'<line x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{bottom}" stroke="{MUTED}"/>',
        _axis_title(left + plot_w / 2, height - 6, axis),
    ]
    for t, name in thresholds:
        body.append(
            f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{bottom}" stroke="{GOLD}" '
            f'stroke-dasharray="4 3"/><text x="{x(t):.1f}" y="{top - 10}" text-anchor="middle" fill="{GOLD}">'
            f"{escape(name)}</text>"
        )
    for i, r in enumerate(rows):
        y = top + i * bar_h
        body.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{escape(str(r["label"])[:22])}</text>')
        value = r.get("value")
        if value is None:
            body.append(f'<text x="{left + 4}" y="{y + 16}" fill="{MUTED}">not enough data</text>')
            continue
        x0, x1 = sorted((x(0), x(value)))
        color = BLUE if value >= 0 else RED
        body.append(
            f'<rect x="{x0:.1f}" y="{y + 5}" width="{max(1.0, x1 - x0):.1f}" height="{bar_h - 10}" '
            f'fill="{color}" opacity=".8"><title>{escape(r["label"])}: {_fmt(value, 3)}</title></rect>'
        )
        if r.get("low") is not None and r.get("high") is not None:
            a, b, cy = x(r["low"]), x(r["high"]), y + bar_h / 2
            body.append(
                f'<path d="M{a:.1f},{cy - 5} v10 M{a:.1f},{cy} H{b:.1f} M{b:.1f},{cy - 5} v10" '
                f'stroke="#1d2330" stroke-width="1.5" fill="none"/>'
            )
        body.append(f'<text x="{left + plot_w + 8}" y="{y + 16}">{escape(_fmt(value, 3))}</text>')
    for t in (lo, 0.0, hi):
        body.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle" fill="{MUTED}">{_fmt(t, 1)}</text>')
    return _svg(width, height, body, title)


def line(
    points: list[dict],
    *,
    title: str,
    x_axis: str,
    y_axis: str,
    key: str = "alpha",
    thresholds: list[tuple[float, str]] = (),
) -> SafeString:
    """Agreement over time: points are {start, <key>, n_units}, drawn in order."""
    left, top, plot_w, plot_h = 60, 16, 520, 160
    width, height = left + plot_w + 20, top + plot_h + 50
    values = [p.get(key) for p in points]
    known = [v for v in values if v is not None]
    lo = min([0.0, *known]) if known else 0.0
    hi = 1.0

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    def x(i: int) -> float:
        return left + (i / max(1, len(points) - 1)) * plot_w if len(points) > 1 else left + plot_w / 2

    body = [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="{LINE}"/>',
        _axis_title(left + plot_w / 2, height - 4, x_axis),
        _axis_title(14, top + plot_h / 2, y_axis, vertical=True),
    ]
    for t in sorted({lo, 0.0, 0.5, hi}):
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{LINE}"/>'
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" fill="{MUTED}">{_fmt(t, 1)}</text>'
        )
    for t, name in thresholds:
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{GOLD}" '
            f'stroke-dasharray="4 3"/><text x="{left + plot_w - 4}" y="{y(t) - 4:.1f}" text-anchor="end" '
            f'fill="{GOLD}">{escape(name)}</text>'
        )
    path, started = [], False
    for i, v in enumerate(values):
        if v is None:
            started = False
            continue
        path.append(f"{'L' if started else 'M'}{x(i):.1f},{y(v):.1f}")
        started = True
    if path:
        body.append(f'<path d="{" ".join(path)}" stroke="{BLUE}" stroke-width="2" fill="none"/>')
    for i, (p, v) in enumerate(zip(points, values, strict=True)):
        if v is not None:
            tip = f"{p['start']}: {_fmt(v, 3)} on {p['n_units']} items"
            body.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{BLUE}"><title>{escape(tip)}</title></circle>'
            )
    if points:
        body.append(f'<text x="{left}" y="{top + plot_h + 16}" fill="{MUTED}">{escape(points[0]["start"])}</text>')
        body.append(
            f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="end" fill="{MUTED}">'
            f"{escape(points[-1]['start'])}</text>"
        )
    return _svg(width, height, body, title)


def confusion(
    matrix: list[list[float]], labels: list[str], *, title: str, rows_axis: str, columns_axis: str
) -> SafeString:
    """A value × value matrix of paired judgements (Krippendorff's coincidences), counts in the cells."""
    n = len(labels)
    cell, left, top = 40, 106, 96
    middle = _vertical_middle(top + n * cell / 2, rows_axis)
    width, height = left + n * cell + 60, max(top + n * cell + 10, middle + len(rows_axis) * 3.4 + 2)
    peak = max((v for row in matrix for v in row), default=0.0)
    body = [_axis_title(left + n * cell / 2, 14, columns_axis), _axis_title(14, middle, rows_axis, vertical=True)]
    for i, label in enumerate(labels):
        y = top + i * cell + cell / 2 + 4
        body.append(f'<text x="{left - 6}" y="{y:.0f}" text-anchor="end">{escape(label[:12])}</text>')
        body.append(
            f'<text transform="translate({left + i * cell + cell / 2:.0f},{top - 6}) rotate(-45)">'
            f"{escape(label[:12])}</text>"
        )
    for i in range(n):
        for j in range(n):
            v = matrix[i][j]
            x, y = left + j * cell, top + i * cell
            stroke = f' stroke="{GOLD}" stroke-width="2"' if i == j else ""
            tip = f"{labels[i]} paired with {labels[j]}: {v:.1f}"
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" rx="3" '
                f'fill="{_sequential(v, peak)}"{stroke}><title>{escape(tip)}</title></rect>'
            )
            shown = f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}"
            body.append(
                f'<text x="{x + cell / 2 - 1:.0f}" y="{y + cell / 2 + 3:.0f}" text-anchor="middle" '
                f'fill="{_text_color(v / peak if peak else 0)}">{escape(shown)}</text>'
            )
    return _svg(width, height, body, title)
