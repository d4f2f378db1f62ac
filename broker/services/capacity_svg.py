"""The queue over time as a small standalone SVG (no plotting library): one step line per
series (before / after), axes with hours and job counts, a legend. Text is escaped; the SVG
has no scripts and no external references."""

from __future__ import annotations

from html import escape
from typing import Mapping, Sequence

COLORS = {"before": "#c0392b", "after": "#2471a3"}
W, H, L, R, T, B = 720, 320, 56, 16, 36, 40


def _ticks(hi: float, n: int = 5) -> list[float]:
    if hi <= 0:
        return [0.0]
    raw = hi / n
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    step = next((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), raw)
    return [i * step for i in range(int(hi / step) + 1)]


def queue_svg(series: Mapping[str, Sequence[tuple[float, int]]], *, title: str = "Jobs waiting") -> str:
    """`series`: name -> [(time, jobs waiting)], times in epoch or trace seconds (shown as hours
    from the first point)."""
    pts = [p for s in series.values() for p in s]
    t0 = min((t for t, _ in pts), default=0.0)
    t1 = max((t for t, _ in pts), default=1.0)
    span = max(t1 - t0, 1e-9)
    ymax = max([n for _, n in pts] + [1])
    pw, ph = W - L - R, H - T - B

    def x(t: float) -> float:
        return L + (t - t0) / span * pw

    def y(n: float) -> float:
        return T + ph - n / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="20" font-size="13">{escape(title)}</text>',
           f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="#333"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="#333"/>']
    for v in _ticks(ymax):
        out.append(f'<line x1="{L - 4}" y1="{y(v):.1f}" x2="{L + pw}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    hours = span / 3600.0
    for v in _ticks(hours):
        xv = x(t0 + v * 3600.0)
        out.append(f'<text x="{xv:.1f}" y="{T + ph + 16}" text-anchor="middle">{v:g}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 6}" text-anchor="middle">hours from the first submit</text>')
    out.append(f'<text x="14" y="{T + ph / 2}" transform="rotate(-90 14 {T + ph / 2})" '
               'text-anchor="middle">jobs waiting</text>')
    for i, (name, s) in enumerate(series.items()):
        color = COLORS.get(name, "#555")
        if s:
            d = [f"M{x(s[0][0]):.1f},{y(s[0][1]):.1f}"]
            for (ta, na), (tb, nb) in zip(s, s[1:]):
                d.append(f"H{x(tb):.1f}V{y(nb):.1f}")
            out.append(f'<path d="{"".join(d)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        lx = L + pw - 120
        out.append(f'<line x1="{lx}" y1="{T + 8 + 14 * i}" x2="{lx + 18}" y2="{T + 8 + 14 * i}" stroke="{color}" '
                   f'stroke-width="2"/><text x="{lx + 24}" y="{T + 12 + 14 * i}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
