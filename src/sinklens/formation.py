"""Did a trained model form the circuits the book studies? The formation criteria, measured and decided.

The criteria (fixed before the recipe search of the README's zoo section, never tuned on mHC):

1. **Previous-token head**: some head scores at least ``previous_token`` (0.4) on held-out text
   or on BOS + R + R (mean attention from each token to the one before it).
2. **Induction head, confirmed**: some head (a) scores at least ``induction`` (0.4) on the
   BOS + R + R induction score, (b) clears the variable-offset selectivity screen of
   :mod:`sinklens.selectivity` (at least ``selectivity`` = 50x its attention to random keys),
   and (c) sits in a layer above a previous-token head. (a) alone can be met by a positional
   head that looks ``N - 1`` back; (b) cannot, because the screen's offset varies per sequence.
3. **In-context copying**: on BOS + R + R, the mean loss on the second copy is at most
   ``copy_loss_ratio`` (0.5) of the mean loss on the first copy.
4. **Dormant-head effect** (reported, not required): the attention the confirmed induction heads
   put on position 0 on natural text; ``dormant`` (0.5) is the aim. Also the number of
   first-token sink heads (first-token score on text >= ``dormant``).

:func:`measure` runs a model on the three inputs and returns a :class:`Formation`;
:func:`decide` turns one into pass/fail per criterion and is a pure function of the numbers
(tested on hand-made cases in ``tests/test_formation.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from sinklens import selectivity as sel
from sinklens.probes import per_position_loss
from sinklens.scores import all_head_scores


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the formation criteria (module docstring)."""

    previous_token: float = 0.4  # the book's induction threshold, used for every pattern score
    induction: float = 0.4
    selectivity: float = sel.INDUCTION_THRESHOLD  # 50x, the screen's paper value
    copy_loss_ratio: float = 0.5
    dormant: float = 0.5  # majority of the attention on position 0


@dataclass
class Formation:
    """What :func:`measure` found in one model. Score arrays are ``[layer, head]``."""

    previous_token_text: np.ndarray
    previous_token_rr: np.ndarray
    induction_rr: np.ndarray
    duplicate_rr: np.ndarray
    induction_selectivity: np.ndarray
    first_token_text: np.ndarray
    first_copy_loss: float
    second_copy_loss: float
    n_repeat: int
    notes: dict = field(default_factory=dict)

    @property
    def previous_token(self) -> np.ndarray:
        """The better of the two previous-token scores, ``[layer, head]``."""
        return np.maximum(self.previous_token_text, self.previous_token_rr)

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Decision:
    """The verdict of :func:`decide` for one model."""

    previous_token_heads: list[tuple[int, int]]
    induction_heads: list[tuple[int, int]]  # confirmed: score, screen and a previous-token head below
    induction_score_only: list[tuple[int, int]]  # score >= threshold but not confirmed
    copy_loss_ratio: float
    induction_p0: dict[str, float]  # "LxHy" -> attention to position 0 on text
    sink_heads: list[tuple[int, int]]
    passes: dict[str, bool]

    @property
    def formed(self) -> bool:
        """All three required criteria hold (the dormant-head effect is reported, not required)."""
        return all(self.passes[k] for k in ("previous_token", "induction", "copying"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["formed"] = self.formed
        return d


def _heads(mask: np.ndarray) -> list[tuple[int, int]]:
    return [(int(l), int(h)) for l, h in zip(*np.nonzero(mask))]


def confirmed_induction_heads(induction_score, induction_selectivity, previous_token,
                              criteria: Criteria = Criteria()) -> np.ndarray:
    """Criterion 2 per head: ``[layer, head]`` bool, True for a confirmed induction head.

    ``induction_score``: the BOS + R + R induction score; ``induction_selectivity``: the
    variable-offset screen's induction selectivity; ``previous_token``: previous-token scores
    (all ``[layer, head]``). A head is confirmed when it scores at least ``criteria.induction``,
    passes the screen (``criteria.selectivity``) and sits in a layer above some head with a
    previous-token score of at least ``criteria.previous_token``.

    >>> confirmed_induction_heads([[0.1, 0.0], [0.9, 0.8]], [[1, 1], [80, 20]], [[0.6, 0.0], [0.0, 0.0]]).tolist()
    [[False, False], [True, False]]
    """
    score, screen_sel, prev = (np.asarray(x, dtype=float) for x in (induction_score, induction_selectivity, previous_token))
    if not score.shape == screen_sel.shape == prev.shape or score.ndim != 2:
        raise ValueError(f"Scores must all be [layer, head] of one shape, got {score.shape}, {screen_sel.shape} "
                         f"and {prev.shape}.")
    return (score >= criteria.induction) & (screen_sel >= criteria.selectivity) & above_a_previous_token_head(prev, criteria)


def above_a_previous_token_head(previous_token, criteria: Criteria = Criteria()) -> np.ndarray:
    """``[layer, head]`` bool: True for every head in a layer above the lowest head whose
    previous-token score reaches ``criteria.previous_token`` (all False when none does)."""
    prev = np.asarray(previous_token, dtype=float)
    layers_with_one = np.flatnonzero((prev >= criteria.previous_token).any(axis=1))
    above = np.zeros(prev.shape, dtype=bool)
    if len(layers_with_one):
        above[int(layers_with_one[0]) + 1 :] = True
    return above


def decide(f: Formation, criteria: Criteria = Criteria()) -> Decision:
    """Pass or fail for each criterion of the module docstring, from measured numbers only."""
    prev = f.previous_token >= criteria.previous_token
    prev_heads = _heads(prev)
    scored = f.induction_rr >= criteria.induction
    confirmed = confirmed_induction_heads(f.induction_rr, f.induction_selectivity, f.previous_token, criteria)
    ratio = f.second_copy_loss / f.first_copy_loss if f.first_copy_loss > 0 else float("inf")
    p0 = {f"L{l}H{h}": float(f.first_token_text[l, h]) for l, h in _heads(confirmed)}
    passes = {
        "previous_token": bool(prev.any()),
        "induction": bool(confirmed.any()),
        "copying": bool(ratio <= criteria.copy_loss_ratio),
        "dormant": bool(p0) and max(p0.values()) >= criteria.dormant,
    }
    return Decision(
        previous_token_heads=prev_heads, induction_heads=_heads(confirmed),
        induction_score_only=_heads(scored & ~confirmed), copy_loss_ratio=float(ratio), induction_p0=p0,
        sink_heads=_heads(f.first_token_text >= criteria.dormant), passes=passes,
    )


@torch.no_grad()
def measure(model, text: Tensor, repeated: Tensor, probe: sel.Probe, *, batch_size: int = 32) -> Formation:
    """Score ``model`` for the criteria.

    ``text``: held-out windows ``[batch, pos]`` with BOS at position 0; ``repeated``: BOS + R + R
    ``[batch, 1 + 2N]``; ``probe``: the selectivity screen's probe batch.
    """
    n_repeat = (repeated.shape[1] - 1) // 2
    if repeated.shape[1] != 1 + 2 * n_repeat:
        raise ValueError(f"repeated must be BOS + R + R (odd length), got {repeated.shape[1]} positions.")
    pattern_only = lambda name: name.endswith("hook_pattern")  # noqa: E731
    _, cache_text = model.run_with_cache(text, names_filter=pattern_only)
    tx = all_head_scores(cache_text)
    del cache_text
    _, cache_rr = model.run_with_cache(repeated, names_filter=pattern_only)
    rr = all_head_scores(cache_rr, n_repeat)
    del cache_rr
    loss = per_position_loss(model, repeated, batch_size=batch_size, progress=False)  # [batch, 2N]
    # entry t predicts token t + 1: the first copy is tokens 1..N (t = 1..N-1, skipping the
    # unpredictable first random token), the second copy tokens N+1..2N (t = N..2N-1)
    first = loss[:, 1:n_repeat].mean().item()
    second = loss[:, n_repeat:].mean().item()
    screen = sel.screen(model, probe, batch_size=batch_size)
    induction_sel = screen.selectivity_of("induction")
    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return Formation(
        previous_token_text=as_np(tx["previous_token"]), previous_token_rr=as_np(rr["previous_token"]),
        induction_rr=as_np(rr["induction"]), duplicate_rr=as_np(rr["duplicate_token"]),
        induction_selectivity=as_np(induction_sel), first_token_text=as_np(tx["first_token"]),
        first_copy_loss=first, second_copy_loss=second, n_repeat=n_repeat,
    )


def standard_inputs(cfg, *, n_seqs: int = 32, n_probe: int = 256, seed: int = 0):
    """The book's inputs for a zoo config ``cfg`` (a :class:`sinklens.train.TrainConfig`):
    ``(text, repeated, probe)`` with the largest BOS + R + R that fits the context."""
    import dataclasses

    from sinklens.data import repeated_random_tokens
    from sinklens.train import BOS_ID, UNK_ID, get_batch, load_data

    m = cfg.model
    data = load_data(cfg.data, m.d_vocab)
    text_cfg = cfg.text_only(batch_size=n_seqs, seed=seed)
    text = get_batch(text_cfg, data.val, 0, split_salt=5)
    n = (m.n_ctx - 1) // 2
    repeated = repeated_random_tokens(n, n_seqs, vocab_size=m.d_vocab, bos_token_id=BOS_ID, exclude_ids=[UNK_ID], seed=seed)
    probe = sel.probe_batch(n_probe, m.n_ctx, (2, m.d_vocab), seed=seed, bos_id=BOS_ID)
    return text, repeated, probe
