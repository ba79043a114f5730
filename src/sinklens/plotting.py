"""The book's figure style: one place for colours, sizes and the attention heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

SEQUENTIAL = "viridis"
DIVERGING = "RdBu_r"


def set_style() -> None:
    """Apply the book's matplotlib/seaborn style."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titlesize": 10})


def token_labels(tokenizer, tokens: Sequence[int]) -> list[str]:
    """Readable labels for token ids: position and the token's text, whitespace made visible."""
    labels = []
    for i, t in enumerate(tokens):
        s = tokenizer.decode([int(t)]).replace("\n", "\\n").replace(" ", "·")
        labels.append(f"{i}:{s[:10]}")
    return labels


def attention_heatmaps(
    patterns: Sequence[np.ndarray],
    titles: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    ncols: int = 2,
    cell: float = 3.6,
):
    """One heatmap per ``[q, k]`` attention pattern, queries down and keys across. Returns the figure."""
    n = len(patterns)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + 1, cell * nrows), squeeze=False)
    for ax, pat, title in zip(axes.flat, patterns, titles):
        sns.heatmap(np.asarray(pat), ax=ax, cmap=SEQUENTIAL, vmin=0, vmax=1, square=True,
                    cbar=True, xticklabels=labels or False, yticklabels=labels or False,
                    cbar_kws={"shrink": 0.7})
        ax.set_title(title)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        if labels:
            ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def layer_head_heatmap(scores: np.ndarray, title: str, *, vmin: float = 0.0, vmax: float = 1.0,
                       annotate_over: float | None = None, cmap: str = SEQUENTIAL):
    """A ``[layer, head]`` score map (layers down, heads across); optionally boxes scores over a threshold."""
    scores = np.asarray(scores)
    fig, ax = plt.subplots(figsize=(0.45 * scores.shape[1] + 2.5, 0.22 * scores.shape[0] + 1.5))
    sns.heatmap(scores, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, cbar_kws={"label": title})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if annotate_over is not None:
        for layer, head in zip(*np.nonzero(scores >= annotate_over)):
            ax.add_patch(plt.Rectangle((head, layer), 1, 1, fill=False, edgecolor="red", lw=1.5))
    fig.tight_layout()
    return fig


CIRCUITSVIS_STATIC = "_static/circuitsvis/iife.js"  # where the built book serves circuitsvis's bundle
_view_counter = 0


def circuitsvis_bundle() -> Path:
    """The JavaScript bundle that the installed ``circuitsvis`` package ships (``dist/cdn/iife.js``)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise FileNotFoundError(f"circuitsvis {circuitsvis.__version__} ships no {path}; reinstall it.")
    return path


def attention_view(
    tokens: Sequence[str], patterns, head_names: Sequence[str], *, view_id: str | None = None,
):
    """An interactive circuitsvis ``AttentionHeads`` view of ``patterns`` ``[head, q, k]`` over ``tokens``.

    Returns an ``IPython.display.HTML`` that works offline in the built book: the page loads the
    bundle from the book's own ``_static/circuitsvis/iife.js`` (copied there by
    :func:`sinklens.book.build_html`), found through Sphinx's ``data-content_root``. In a plain
    Jupyter session, which has no ``data-content_root``, it falls back to unpkg.com (online only).
    The element id is ``sinklens-cv-<n>``, deterministic within a kernel session.
    """
    import json

    import circuitsvis
    import torch
    from IPython.display import HTML

    global _view_counter
    pat = torch.as_tensor(np.asarray(patterns, dtype=np.float32))
    if pat.ndim != 3 or pat.shape[1] != pat.shape[2] or pat.shape[1] != len(tokens):
        raise ValueError(f"patterns must be [head, q, k] with q = k = len(tokens) = {len(tokens)}, "
                         f"got shape {tuple(pat.shape)}.")
    if len(head_names) != pat.shape[0]:
        raise ValueError(f"{pat.shape[0]} patterns but {len(head_names)} head names.")
    if view_id is None:
        _view_counter += 1
        view_id = f"sinklens-cv-{_view_counter}"
    props = {"attention": [[[round(float(x), 4) for x in row] for row in head] for head in pat.tolist()],
             "tokens": list(tokens), "attentionHeadNames": list(head_names)}
    cdn = f"https://unpkg.com/circuitsvis@{circuitsvis.__version__}/dist/cdn/iife.js"
    script = f"""<div id="{view_id}" class="sinklens-attention-view" style="margin: 15px 0;"></div>
<script>
(function () {{
  var q = window.sinklensCV = window.sinklensCV || {{queue: [], loading: false}};
  q.queue.push(function () {{
    CircuitsVis.render("{view_id}", CircuitsVis.AttentionHeads, {json.dumps(props)});
  }});
  function drain() {{ while (q.queue.length) q.queue.shift()(); }}
  if (window.CircuitsVis) {{ drain(); return; }}
  if (q.loading) return;
  q.loading = true;
  var root = document.documentElement.dataset.content_root;
  var s = document.createElement("script");
  s.src = root !== undefined ? root + "{CIRCUITSVIS_STATIC}" : "{cdn}";
  s.onload = drain;
  document.head.appendChild(s);
}})();
</script>"""
    return HTML(script)
