"""Figures drawn by code: the method diagram (README, notebooks 02 and 03).

`method_figure()` draws JTCSE as this library trains it: one sentence fed twice (dropout makes the two views),
two towers run layer by layer, the cross-attention branch (a shadow [CLS] row that reads the other tower's values
at the cross layers), the losses each output feeds, and the three stages. Boxes and arrows only (matplotlib), so
it renders the same everywhere and regenerates with the other figures.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BLUE, ORANGE, RED, GREY, GREEN, PURPLE = "#3b75af", "#ef8636", "#c03d3e", "#8c8c8c", "#519e3e", "#8d69b8"


def _box(ax, x, y, w, h, text, color, fill=0.14, size=9, weight="normal", style="round,pad=0.02,rounding_size=0.08"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, linewidth=1.2, edgecolor=color,
                                facecolor=(*plt.matplotlib.colors.to_rgb(color), fill)))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, color="#222222")


def _arrow(ax, start, end, color=GREY, style="-|>", width=1.1, dashed=False, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, linewidth=width, color=color,
                                 linestyle=(0, (3, 2)) if dashed else "-", connectionstyle=f"arc3,rad={rad}",
                                 shrinkA=1, shrinkB=1))


def method_figure(cross_layers: tuple[int, ...] = (1, 3), depth: int = 4):
    """The method diagram: towers, views, branch, losses (top) and the three stages (bottom strip).

    `cross_layers` (0-based) and `depth` set how many layer boxes are drawn and which carry the branch; the
    default is a 4-layer sketch of BERT's 6-of-12 (every other layer)."""
    fig, ax = plt.subplots(figsize=(11, 5.6))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5.75)
    ax.axis("off")

    # input: one sentence, fed twice; dropout makes the views
    _box(ax, 0.15, 2.35, 1.55, 0.75, "sentence $x$\nfed twice", GREY, fill=0.06)
    ax.text(0.92, 2.02, "dropout masks\nmake 2 views", ha="center", va="top", fontsize=7.5, color=GREY)

    # the towers: layer boxes bottom -> top, A left, B right
    layer_h, gap, y0 = 0.52, 0.16, 1.55
    xa, xb, w = 2.2, 5.25, 1.55
    for tower, x, color in (("A", xa, BLUE), ("B", xb, ORANGE)):
        ax.text(x + w / 2, y0 - 0.32, f"tower {tower}\n(its own weights)", ha="center", va="top", fontsize=8.5,
                color=color, weight="bold")
        for i in range(depth):
            y = y0 + i * (layer_h + gap)
            is_cross = i in cross_layers
            _box(ax, x, y, w, layer_h, f"layer {i + 1}" + ("  (cross)" if is_cross else ""), color,
                 fill=0.30 if is_cross else 0.10, size=8)
            if i:
                _arrow(ax, (x + w / 2, y - gap), (x + w / 2, y), color=color)
        if tower == "A":
            _arrow(ax, (1.70, 2.6), (x, y0 + layer_h / 2), color=GREY, rad=0.2)
        else:  # under tower A, into tower B's first layer from below
            _arrow(ax, (1.2, 2.35), (x + w / 2, y0), color=GREY, rad=0.35)
    top = y0 + depth * (layer_h + gap) - gap

    # the branch: at each cross layer, tower A's shadow [CLS] reads tower B's values, and vice versa
    for i in cross_layers:
        y = y0 + i * (layer_h + gap) + layer_h / 2
        _arrow(ax, (xb, y + 0.08), (xa + w, y + 0.08), color=RED, style="-|>", width=1.3, dashed=True)
        _arrow(ax, (xa + w, y - 0.08), (xb, y - 0.08), color=RED, style="-|>", width=1.3, dashed=True)
    between = [i for i in range(depth) if i not in cross_layers and cross_layers[0] < i < cross_layers[-1]]
    label_y = y0 + (between[0] if between else cross_layers[0]) * (layer_h + gap) + layer_h / 2
    ax.text((xa + w + xb) / 2, label_y, "branch: a shadow [CLS]\nreads the other tower's\nvalues V (no new weights)",
            ha="center", va="center", fontsize=7.3, color=RED)

    # outputs of each tower: [CLS] of the main path, the pooler, the branch's [CLS]
    outputs = [(xa, BLUE, "A"), (xb, ORANGE, "B")]
    for x, color, t in outputs:
        _box(ax, x - 0.1, top + 0.35, 0.82, 0.5, f"CLS$_{t}$", color, fill=0.22, size=8.5)
        _box(ax, x + 0.83, top + 0.35, 0.82, 0.5, f"cross$_{t}$", RED, fill=0.16, size=8.5)
        _arrow(ax, (x + 0.3, top), (x + 0.3, top + 0.35), color=color)
        _arrow(ax, (x + 1.24, top), (x + 1.24, top + 0.35), color=RED, dashed=True)
    ax.text((xa + w + xb) / 2, top + 0.6, "B sentences,\n2 views: 2B rows", ha="center", fontsize=7.5, color=GREY)

    # the losses
    lx, lw = 7.35, 3.45
    losses = [
        ("NCE(A) + NCE(B)", "each tower's two views (SimCLR form)", BLUE),
        ("ICNCE(CLS$_A$, CLS$_B$)", "across towers, direction drawn per step", PURPLE),
        ("ICNCE(cross$_A$, cross$_B$)", "the branch's [CLS] across towers", RED),
        ("ICTM(A, B) + ICTM(B, A)", "tensor modulus (CLS and pooler): direction and length", GREEN),
    ]
    for k, (name, what, color) in enumerate(losses):
        y = 4.15 - k * 0.78
        _box(ax, lx, y, lw, 0.62, f"{name}\n", color, fill=0.12, size=8.5, weight="bold")
        ax.text(lx + lw / 2, y + 0.14, what, ha="center", va="center", fontsize=7.2, color="#444444")
    ax.text(lx + lw / 2, 4.97, "stage 2 loss (JTCSE), summed", ha="center", fontsize=9, weight="bold")
    _arrow(ax, (xb + w + 0.1, top + 0.6), (lx, 4.45), color=GREY, rad=-0.1)
    ax.text(lx + lw / 2, 1.05, "at inference: CLS$_A$ + CLS$_B$\n(the branch is training-only)", ha="center",
            fontsize=8, color="#333333")

    # the three stages along the bottom
    stages = [("Stage 1", "two SimCSE encoders\n(towers A and B, alone)", BLUE),
              ("Stage 2", "JTCSE: the twin trained\njointly (this diagram)", RED),
              ("Distillation", "JTCSE-D: one tower learns\nthe twin's similarities", PURPLE)]
    sx, sw = 0.2, 3.3
    for k, (name, what, color) in enumerate(stages):
        x = sx + k * (sw + 0.35)
        _box(ax, x, 0.05, sw, 0.62, "", color, fill=0.10)
        ax.text(x + 0.12, 0.36, name, ha="left", va="center", fontsize=9, weight="bold", color=color)
        ax.text(x + sw - 0.1, 0.36, what, ha="right", va="center", fontsize=7.5, color="#333333")
        if k:
            _arrow(ax, (x - 0.35, 0.36), (x, 0.36), color=GREY)
    ax.set_title("JTCSE as this companion trains it", fontsize=12, weight="bold", loc="left")
    fig.tight_layout()
    return fig
