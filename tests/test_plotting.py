"""The interactive attention view: offline-first script, props, and clear errors on bad shapes.
(That it draws in a real browser is checked on the built book by tests/test_browser.py.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sinklens import plotting


def test_attention_view_loads_the_books_own_bundle_and_carries_the_pattern():
    pattern = np.tril(np.ones((2, 3, 3))) / np.arange(1, 4)[:, None]  # [head, q, k], rows sum to 1
    html = plotting.attention_view(["a", "b", "c"], pattern, ["L0H0", "L0H1"], view_id="sinklens-cv-test").data
    assert 'id="sinklens-cv-test"' in html
    assert f'root + "{plotting.CIRCUITSVIS_STATIC}"' in html  # the built book: no network needed
    assert "unpkg.com/circuitsvis@" in html  # plain Jupyter (no data-content_root): the CDN
    props = json.loads(re.search(r"CircuitsVis\.AttentionHeads, (\{.*\})\);", html).group(1))
    assert props["tokens"] == ["a", "b", "c"] and props["attentionHeadNames"] == ["L0H0", "L0H1"]
    assert np.allclose(props["attention"], pattern, atol=1e-4)
    assert plotting.circuitsvis_bundle().stat().st_size > 100_000


def test_attention_view_ids_differ_between_views():
    a = plotting.attention_view(["x"], np.ones((1, 1, 1)), ["h"]).data
    b = plotting.attention_view(["x"], np.ones((1, 1, 1)), ["h"]).data
    assert re.search(r'id="(sinklens-cv-\d+)"', a).group(1) != re.search(r'id="(sinklens-cv-\d+)"', b).group(1)


@pytest.mark.parametrize("tokens, shape, names, match", [
    (["a", "b"], (1, 3, 3), ["h"], "len\\(tokens\\) = 2"),
    (["a", "b"], (2, 2), ["h"], "must be \\[head, q, k\\]"),
    (["a", "b"], (2, 2, 2), ["h"], "2 patterns but 1 head names"),
])
def test_attention_view_rejects_mismatched_inputs(tokens, shape, names, match):
    with pytest.raises(ValueError, match=match):
        plotting.attention_view(tokens, np.ones(shape), names)
