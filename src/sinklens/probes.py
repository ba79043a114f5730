"""Run a model on controlled inputs and score what its heads do, batch by batch.

Building blocks for the chapters that probe heads with inputs made on purpose:

- :func:`run_batched`: run the model over a ``[n, pos]`` token tensor in chunks (a progress bar
  on a terminal), cache only the hooks asked for, reduce each chunk with a function and
  concatenate the results, so a large batch never holds every activation at once.
- :func:`score_batch`: every head score of :mod:`sinklens.scores`, per sequence, plus each
  head's attention to position 0 from every query, the next-token loss per position and
  (optionally) value and residual norms, in one batched pass.
- :func:`per_position_loss`: the next-token cross-entropy at each position.
- Input edits for "is it position 0 or the BOS token?": :func:`replace_first_token`,
  :func:`drop_first_token`, :func:`move_first_token`; :func:`attention_to_key` reads the
  attention any key position receives.
- Head bookkeeping: :func:`heads_over_threshold`, :func:`head_name`, :func:`parse_head`,
  :func:`compare_heads` (found vs expected heads, with recall and precision), and
  :func:`head_set_verdict`.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from sinklens import scores as S

__all__ = [
    "hook_filter",
    "run_batched",
    "per_position_loss",
    "score_batch",
    "attention_to_key",
    "replace_first_token",
    "drop_first_token",
    "move_first_token",
    "head_name",
    "parse_head",
    "heads_over_threshold",
    "compare_heads",
    "head_set_verdict",
]

Head = tuple[int, int]

# --- running the model --------------------------------------------------------------------------

_HOOK_SUFFIXES = {
    "pattern": "attn.hook_pattern",
    "value": "attn.hook_v",
    "z": "attn.hook_z",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
}


def hook_filter(*kinds: str) -> Callable[[str], bool]:
    """A ``names_filter`` for ``run_with_cache`` keeping only the per-layer hooks of ``kinds``.

    ``kinds`` are any of ``"pattern"``, ``"value"``, ``"z"``, ``"resid_pre"``, ``"resid_mid"``,
    ``"resid_post"``. Caching a few hooks instead of all of them saves memory and time.
    """
    unknown = [k for k in kinds if k not in _HOOK_SUFFIXES]
    if unknown or not kinds:
        raise ValueError(f"kinds must be among {sorted(_HOOK_SUFFIXES)}; got {kinds!r}.")
    suffixes = tuple("." + _HOOK_SUFFIXES[k] for k in kinds)

    def keep(name: str) -> bool:
        return name.startswith("blocks.") and name.endswith(suffixes)

    return keep


def _check_tokens(tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"tokens must be an integer tensor [batch, pos]; got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}."
        )
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens is empty: shape {tuple(tokens.shape)}.")
    return tokens.long()


def _progress(iterable, total: int, desc: str, progress: bool | None):
    from tqdm import tqdm

    # None: a bar on a terminal only (papermill and pytest capture stderr; no bar there).
    disable = (not sys.stderr.isatty()) if progress is None else (not progress)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False)


def run_batched(
    model,
    tokens: Tensor,
    reduce: Callable[[Tensor, Tensor, Mapping[str, Tensor] | None], Mapping[str, Tensor]],
    *,
    batch_size: int = 8,
    names_filter: Callable[[str], bool] | None = None,
    progress: bool | None = None,
    desc: str = "forward",
) -> dict[str, Tensor]:
    """Run ``model`` on ``tokens [n, pos]`` in chunks of ``batch_size`` and concatenate ``reduce``'s outputs.

    For each chunk: ``logits, cache = model.run_with_cache(chunk, names_filter=names_filter)``
    (or, with ``names_filter=None``, a plain forward pass and ``cache=None``), then
    ``reduce(chunk, logits, cache)`` returns a dict of tensors whose first dimension is the chunk's
    batch. The results are moved to the CPU and concatenated along that dimension; the chunk's
    cache is dropped before the next chunk, so memory stays at one chunk's activations.
    """
    tokens = _check_tokens(tokens)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    n = tokens.shape[0]
    starts = range(0, n, batch_size)
    pieces: list[Mapping[str, Tensor]] = []
    with torch.no_grad():
        for start in _progress(starts, len(starts), desc, progress):
            chunk = tokens[start : start + batch_size]
            if names_filter is None:
                logits, cache = model(chunk), None
            else:
                logits, cache = model.run_with_cache(chunk, names_filter=names_filter)
            out = reduce(chunk, logits, cache)
            for key, value in out.items():
                if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != chunk.shape[0]:
                    raise ValueError(
                        f"reduce returned {key!r} with shape {tuple(getattr(value, 'shape', ()))}; "
                        f"every output needs a first dimension of the chunk's batch ({chunk.shape[0]})."
                    )
            pieces.append({k: v.detach().cpu() for k, v in out.items()})
            del logits, cache
    keys = list(pieces[0])
    return {k: torch.cat([p[k] for p in pieces]) for k in keys}


def _loss_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    logprobs = logits.float().log_softmax(-1)[:, :-1]
    return -logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def per_position_loss(model, tokens: Tensor, *, batch_size: int = 8, progress: bool | None = None) -> Tensor:
    """Next-token cross-entropy (nats): ``[batch, pos - 1]``, entry ``t`` the loss of predicting token ``t + 1``.

    The first token is never predicted, so a sequence of ``L`` tokens gives ``L - 1`` losses.
    """
    tokens = _check_tokens(tokens)
    if tokens.shape[1] < 2:
        raise ValueError("per_position_loss needs at least 2 tokens per sequence.")
    out = run_batched(
        model, tokens, lambda chunk, logits, cache: {"loss": _loss_from_logits(logits, chunk)},
        batch_size=batch_size, progress=progress, desc="loss",
    )
    return out["loss"]


def score_batch(
    model,
    tokens: Tensor,
    *,
    n_repeat: int | None = None,
    prefix: int = 1,
    batch_size: int = 8,
    include_norms: bool = False,
    keep_patterns: Sequence[Head] = (),
    include_head_output: bool = False,
    progress: bool | None = None,
) -> dict[str, Tensor]:
    """Score every head on every sequence of ``tokens [n, pos]``, one batched pass.

    Returns, per sequence (first dim ``n``):

    - the scores of :func:`sinklens.scores.all_head_scores` with ``per_batch=True``, each
      ``[n, layer, head]``: ``"previous_token"``, ``"first_token"``, ``"verticality"``,
      ``"kurtosis"``, and with ``n_repeat`` (tokens are ``prefix`` + R + R, ``len(R) = n_repeat``)
      ``"induction"`` and ``"duplicate_token"``;
    - ``"attn_to_first"`` ``[n, layer, head, pos]``: attention from each query to position 0
      (query 0's is 1 by construction);
    - ``"loss"`` ``[n, pos - 1]``: next-token loss, as :func:`per_position_loss`;
    - with ``include_norms``: ``"value_norm"`` ``[n, layer, head, pos]`` and ``"residual_norm"``
      ``[n, layer, pos]`` (``resid_post``), as in :mod:`sinklens.scores`;
    - with ``include_head_output``: ``"z_norm"`` ``[n, layer, head, pos]``, the L2 norm of each
      head's output ``hook_z`` (the attention-weighted values, before the output projection);
    - with ``keep_patterns`` (a list of ``(layer, head)``): ``"patterns"`` ``[n, len(keep_patterns),
      q, k]``, those heads' full attention patterns, in that order.
    """
    keep = [(int(l), int(h)) for l, h in keep_patterns]
    kinds = ("pattern", "value", "resid_post") if include_norms else ("pattern",)
    kinds = kinds + (("z",) if include_head_output else ())

    def reduce(chunk: Tensor, logits: Tensor, cache) -> dict[str, Tensor]:
        patterns = S.stack_patterns(cache)  # [layer, batch, head, q, k]
        out = S.all_head_scores(patterns, n_repeat, prefix=prefix, per_batch=True)
        if include_norms:
            n_heads = patterns.shape[2]
            out["value_norm"] = S.value_norms(cache, n_heads=n_heads, per_batch=True)
            out["residual_norm"] = S.residual_norms(cache, per_batch=True)
        out["attn_to_first"] = patterns[..., 0].movedim(1, 0)  # [batch, layer, head, q]
        if include_head_output:
            out["z_norm"] = S.head_output_norms(cache, per_batch=True)  # [batch, layer, head, pos]
        if keep:
            layers, heads = zip(*keep)
            out["patterns"] = patterns[list(layers), :, list(heads)].movedim(1, 0)  # [batch, sel, q, k]
        if chunk.shape[1] > 1:
            out["loss"] = _loss_from_logits(logits, chunk)
        return out

    return run_batched(
        model, tokens, reduce, batch_size=batch_size, names_filter=hook_filter(*kinds),
        progress=progress, desc="score heads",
    )


def attention_to_key(patterns: Tensor, key: int, *, q_start: int | None = None) -> Tensor:
    """Mean attention that key position ``key`` receives from queries ``q >= q_start``.

    ``patterns`` is ``[..., q, k]`` (e.g. stacked ``[layer, batch, head, q, k]``); the result has
    the leading shape. ``q_start`` defaults to ``key + 1`` (the query at ``key`` itself is left
    out, as :func:`sinklens.scores.first_token_scores` leaves out query 0).
    """
    if not isinstance(patterns, Tensor) or patterns.dim() < 2 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError("patterns must be a tensor [..., q, k], square over [q, k].")
    length = patterns.shape[-1]
    if not 0 <= key < length:
        raise ValueError(f"key must be in [0, {length}); got {key}.")
    q_start = key + 1 if q_start is None else q_start
    if not key <= q_start < length:
        raise ValueError(f"q_start must be in [key={key}, {length}) so that the key is visible; got {q_start}.")
    return patterns[..., q_start:, key].float().mean(-1)


# --- editing the first token --------------------------------------------------------------------


def replace_first_token(tokens: Tensor, new_ids: int | Sequence[int] | Tensor) -> Tensor:
    """A copy of ``tokens [batch, pos]`` with position 0 set to ``new_ids`` (one id, or one per row)."""
    tokens = _check_tokens(tokens).clone()
    ids = torch.as_tensor(new_ids, dtype=torch.long)
    if ids.dim() == 1 and ids.shape[0] != tokens.shape[0]:
        raise ValueError(f"need one id or {tokens.shape[0]} ids (one per row); got {ids.shape[0]}.")
    if ids.dim() > 1:
        raise ValueError("new_ids must be an int or a 1-D sequence of ids.")
    tokens[:, 0] = ids
    return tokens


def drop_first_token(tokens: Tensor) -> Tensor:
    """``tokens [batch, pos]`` without position 0 (e.g. the BOS): ``[batch, pos - 1]``."""
    tokens = _check_tokens(tokens)
    if tokens.shape[1] < 2:
        raise ValueError("Cannot drop the only token of a sequence.")
    return tokens[:, 1:].clone()


def move_first_token(tokens: Tensor, position: int) -> Tensor:
    """Move the token at position 0 (e.g. the BOS) to ``position``, shifting the ones before it left.

    The length is unchanged: ``[t0, t1, ..., tp, ...]`` becomes ``[t1, ..., tp, t0, ...]`` with
    ``t0`` at index ``position``. Position 0 then holds an ordinary token.
    """
    tokens = _check_tokens(tokens)
    length = tokens.shape[1]
    if not 0 < position < length:
        raise ValueError(f"position must be in [1, {length}); got {position}.")
    return torch.cat([tokens[:, 1 : position + 1], tokens[:, :1], tokens[:, position + 1 :]], dim=1)


# --- heads --------------------------------------------------------------------------------------


def head_name(layer: int, head: int, style: str = "LH") -> str:
    """``"L18H6"`` (``style="LH"``) or ``"18.6"`` (``style="dot"``, the GPT-2 literature's)."""
    if style == "LH":
        return f"L{layer}H{head}"
    if style == "dot":
        return f"{layer}.{head}"
    raise ValueError(f"style must be 'LH' or 'dot'; got {style!r}.")


def parse_head(name: str) -> Head:
    """``"L5H1"``, ``"5.1"`` or ``"5,1"`` → ``(5, 1)``."""
    s = name.strip().upper()
    try:
        if s.startswith("L") and "H" in s:
            layer, head = s[1:].split("H")
        else:
            layer, head = s.replace(",", ".").split(".")
        return int(layer), int(head)
    except ValueError:
        raise ValueError(f"Cannot read a head from {name!r}; use 'L5H1' or '5.1'.") from None


def heads_over_threshold(scores: Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """``[(layer, head, score)]`` for every head with ``score >= threshold`` in ``scores [layer, head]``, best first.

    The scores are attention probabilities, so ``threshold`` must lie in [0, 1].
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError("scores must be a [layer, head] tensor.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1] (an attention share), got {threshold!r}.")
    idx = (scores >= threshold).nonzero().tolist()
    found = [(int(l), int(h), float(scores[l, h])) for l, h in idx]
    return sorted(found, key=lambda x: (-x[2], x[0], x[1]))


def compare_heads(found: Iterable[Head], expected: Iterable[Head]) -> dict:
    """Found vs expected heads: ``hits``, ``missed``, ``extra`` (sorted lists) and ``recall``, ``precision``."""
    found_set = {(int(l), int(h)) for l, h in found}
    expected_set = {(int(l), int(h)) for l, h in expected}
    if not expected_set:
        raise ValueError("expected must name at least one head.")
    hits = sorted(found_set & expected_set)
    return {
        "hits": hits,
        "missed": sorted(expected_set - found_set),
        "extra": sorted(found_set - expected_set),
        "recall": len(hits) / len(expected_set),
        "precision": len(hits) / len(found_set) if found_set else float("nan"),
    }


def head_set_verdict(comparison: Mapping) -> str:
    """``"reproduced"`` if every expected head was found, ``"partly"`` if some, else ``"not reproduced"``."""
    recall = comparison["recall"]
    if recall == 1.0:
        return "reproduced"
    return "partly" if recall > 0 else "not reproduced"
