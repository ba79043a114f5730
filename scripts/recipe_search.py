"""The recipe search of the zoo: train residual candidates, judge each by the formation criteria.

The criteria are :mod:`sinklens.formation`'s, fixed before the search. Only the **residual**
scheme is trained here: the recipe is chosen on it alone, frozen, and only then are HC, mHC and
mHC-lite trained with it (``python -m sinklens.zoo``). The choice rule, also fixed in advance:
the cheapest candidate (fewest training tokens) under which **every** seed tried forms the
circuits (previous-token head, confirmed induction head, in-context copying).

    python scripts/recipe_search.py train CANDIDATE --seeds 0 1 2   # one thread each, resumable
    python scripts/recipe_search.py judge [--out recipe_search.json]

Every run lives in the cache under ``recipe-search/`` (resumable, like every training); ``judge``
scores the final checkpoint of every finished run and writes one JSON record per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sinklens import formation
from sinklens.cache import cache_dir
from sinklens.model import GPTConfig
from sinklens.train import TrainConfig, evaluate, load_checkpoint, load_data, model_from_checkpoint, train

# The 6-layer recipe of ../shared's "Circuit formation" notes, and neighbours of it.
BASE = dict(
    model=dict(n_layers=6, d_model=128, n_heads=4, n_ctx=64, d_vocab=2048, positional="rotary"),
    batch_size=32, n_steps=3000, lr=3e-3, warmup_steps=100, repeat_fraction=0.25,
    random_segment_fraction=0.5, random_segment_lengths=(8, 31), n_snapshots=24, resume_every=250,
)
CANDIDATES: dict[str, dict] = {
    "r6-3000": {},  # the notes' recipe: 6.1M tokens
    "r6-2000": dict(n_steps=2000),  # cheaper: 4.1M tokens
    "r6-4000": dict(n_steps=4000),  # margin: 8.2M tokens
    # added 2026-12-04 for the 60-minute make-book budget: the same 3000 steps and schedule with
    # half the batch (3.1M tokens), compiled like the zoo (the residual checkpoints of r6-3000 form
    # the circuit between steps 1449 and 2085, so fewer steps were ruled out before any run).
    # Result: seeds 0 and 1 formed nothing (copy-loss ratio 0.98); rejected, seed 2 not run.
    "r6-3000-b16": dict(batch_size=16, compile=True),
    # added 2026-12-04 (recipe v3, same budget, same criteria and rule, written before any run):
    # 2000 steps with a faster route to the circuit, seed 0 of both first, then seeds 1-2 of any
    # that passed (the lr change first: it keeps the data mixture). Results: lr 6e-3 formed nothing
    # on seed 0 (copy-loss ratio 0.96); seg75 formed on seeds 0 and 2 but not 1 (R+R 0.99, screen
    # 33x < 50x). Both rejected; the recipe stays r6-3000. (Trained by a scratch script as the zoo's
    # config with these fields replaced, which equals these configs but for the name.)
    "r6-2000-lr6e-3": dict(n_steps=2000, lr=6e-3, compile=True),
    "r6-2000-seg75": dict(n_steps=2000, random_segment_fraction=0.75, compile=True),
    # the positions control, run 2026-12-04 after the recipe was frozen: seeds 0-2 formed nothing
    # (best previous-token 0.31 / 0.29 / 0.35, induction 0.04 / 0.03 / 0.05, copy-loss ratio 0.98)
    "r6-learned-3000": dict(model={**BASE["model"], "positional": "learned"}),
    # CI size: the cheapest model that still forms the circuit. The 2-layer recipe of the notes
    # (zoo "tiny" at first) reached an induction score of 0.85 but only 30x on the screen.
    "t3-3000": dict(model={**BASE["model"], "n_layers": 3}, repeat_fraction=0.0),
    "t4-3000": dict(model={**BASE["model"], "n_layers": 4}, repeat_fraction=0.0),  # t3 reached 44x, not 50x
}


def candidate_config(name: str, seed: int) -> TrainConfig:
    spec = {**BASE, **CANDIDATES[name]}
    spec = {**spec, "model": GPTConfig(**spec["model"], residual="residual")}
    return TrainConfig(**spec, seed=seed, name=f"search-{name}")


def run_dir(cfg: TrainConfig) -> Path:
    return cache_dir() / "recipe-search" / f"{cfg.name}-seed{cfg.seed}-{cfg.run_id()}"


def judge(out: Path) -> list[dict]:
    records = []
    for name in CANDIDATES:
        for seed in range(5):
            # any finished run of this candidate and seed (a code change that adds a config field
            # with its default changes the run id, not the recipe)
            finals = sorted((cache_dir() / "recipe-search").glob(f"search-{name}-seed{seed}-*/final.ckpt"))
            if not finals:
                continue
            state = load_checkpoint(finals[-1])
            cfg = TrainConfig.from_dict(state["config"])
            model = model_from_checkpoint(state)
            text, repeated, probe = formation.standard_inputs(cfg)
            f = formation.measure(model, text, repeated, probe)
            d = formation.decide(f)
            best = lambda a: [float(a.max()), [int(i) for i in divmod(int(a.argmax()), a.shape[1])]]  # noqa: E731
            records.append(dict(
                candidate=name, seed=seed, n_tokens=cfg.n_tokens,
                val_loss=evaluate(model, cfg, load_data(cfg.data, cfg.model.d_vocab).val),  # plain text only
                decision=d.to_dict(), best_previous_token=best(f.previous_token), best_induction=best(f.induction_rr),
                best_selectivity=best(f.induction_selectivity), best_duplicate=best(f.duplicate_rr),
                best_first_token_text=best(f.first_token_text),
                first_copy_loss=f.first_copy_loss, second_copy_loss=f.second_copy_loss,
            ))
            print(f"{name} seed {seed}: formed={d.formed} {d.passes} induction={d.induction_heads} "
                  f"p0={d.induction_p0} copy ratio {d.copy_loss_ratio:.2f}", flush=True)
    out.write_text(json.dumps(records, indent=1))
    print(markdown_table(records))
    return records


def markdown_table(records: list[dict]) -> str:
    """One row per run: the best heads against the criteria, as in the README's zoo section."""
    head = lambda v: f"L{v[1][0]}H{v[1][1]} {v[0]:.2f}"  # noqa: E731
    lines = ["| candidate | seed | tokens | val loss | best previous-token | best induction (R+R) | best screen | "
             "copy loss 2nd / 1st | induction heads' P0 share | formed |", "|" + "---|" * 10]
    for r in records:
        d = r["decision"]
        p0 = ", ".join(f"{k} {v:.2f}" for k, v in d["induction_p0"].items()) or "-"
        lines.append(
            f"| {r['candidate']} | {r['seed']} | {r['n_tokens'] / 1e6:.1f}M | {r['val_loss']:.3f} | "
            f"{head(r['best_previous_token'])} | {head(r['best_induction'])} | "
            f"L{r['best_selectivity'][1][0]}H{r['best_selectivity'][1][1]} {r['best_selectivity'][0]:.0f}x | "
            f"{r['second_copy_loss']:.2f} / {r['first_copy_loss']:.2f} | {p0} | {'yes' if d['formed'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("candidate", choices=tuple(CANDIDATES))
    t.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    j = sub.add_parser("judge")
    j.add_argument("--out", default="recipe_search.json")
    args = parser.parse_args(argv)
    if args.cmd == "train":
        for seed in args.seeds:
            cfg = candidate_config(args.candidate, seed)
            train(cfg, run_dir(cfg), progress=True)
        return 0
    judge(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
