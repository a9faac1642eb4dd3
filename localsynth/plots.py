"""Figures for reports: each on an Agg canvas of its own (no pyplot state, no display needed,
the caller's matplotlib backend untouched), returned as PNG bytes."""

from __future__ import annotations

import io


def figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
