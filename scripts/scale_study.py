"""At what scale do the heads of chapters 5 and 6 form? Train a zoo size on a GPU and score it.

Chapters 5 and 6 study previous-token, induction and duplicate-token heads, and BOS sinks, in the
zoo's models. In the CPU-sized ``small`` zoo none of the first three form, so most claims stay
"not tested here". This script is the larger run, for a machine with a CUDA GPU:

    python scripts/scale_study.py calibrate --out DIR     # steps/s of candidate configs, 12 at once
    python -m sinklens.zoo --size medium --jobs 2         # train the medium zoo (device "cuda")
    python scripts/scale_study.py analyse --size medium --out DIR

These models are too small to keep a GPU busy, and processes sharing one GPU take turns: on an
H100, four trainings at once went no faster in total than two (see the notes on issue #6).

``analyse`` scores every saved checkpoint of every (scheme, seed) run of a size with the same
package functions the chapters use (``scores.all_head_scores``, ``selectivity.screen``,
``head_ablation.head_ablation_effects``) and writes ``DIR/scale_study_<size>.json.gz``: per run,
per checkpoint, per head. ``summarise`` prints what it shows (no plots, no verdicts: those belong
to the chapters).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from sinklens import head_ablation as ha
from sinklens import selectivity as S
from sinklens import zoo
from sinklens.data import repeated_random_tokens
from sinklens.hyperconnections import SCHEMES, doubly_stochastic_error
from sinklens.model import GPTConfig
from sinklens.scores import all_head_scores
from sinklens.train import BOS_ID, UNK_ID, TrainConfig, get_batch, load_checkpoint, load_data, model_from_checkpoint

CANDIDATES = {  # for `calibrate`: the zoo's small model with a bigger batch, and a wider, deeper one
    "A-4L-d128": dict(model=dict(n_layers=4, d_model=128, n_heads=4, n_ctx=128, d_vocab=4096), batch_size=64),
    "B-6L-d256": dict(model=dict(n_layers=6, d_model=256, n_heads=8, n_ctx=256, d_vocab=4096), batch_size=32),
}


def calibrate(out: Path, n_steps: int = 300, copies: int = 12, device: str = "cuda") -> None:
    """Steps/s of each candidate and scheme, with ``copies`` trainings sharing the GPU.

    Each rate is ``n_steps`` over the process's whole wall time, start-up (imports, data) included.
    """
    jobs = []
    names = [(c, s) for c in CANDIDATES for s in SCHEMES]
    for i in range(copies):
        cand, scheme = names[i % len(names)]
        spec = dict(CANDIDATES[cand])
        cfg = TrainConfig(model=GPTConfig(**spec["model"], residual=scheme), batch_size=spec["batch_size"],
                          n_steps=n_steps, device=device, seed=100 + i, name=f"cal-{cand}-{scheme}", n_snapshots=4,
                          resume_every=n_steps)
        cmd = [sys.executable, "-m", "sinklens.train", "--config", json.dumps(cfg.to_dict()),
               "--out", str(out / f"cal{i}"), "--no-progress"]
        jobs.append((cand, scheme, time.perf_counter(), subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
    finished: dict[int, float] = {}
    while len(finished) < len(jobs):  # note each process's end as it happens, not when we get to it
        for i, (_, _, _, proc) in enumerate(jobs):
            if i not in finished and proc.poll() is not None:
                finished[i] = time.perf_counter()
        time.sleep(0.2)
    rows = []
    for i, (cand, scheme, t0, proc) in enumerate(jobs):
        seconds = finished[i] - t0
        rows.append(dict(candidate=cand, scheme=scheme, rc=proc.returncode, seconds=seconds,
                         steps_per_s=n_steps / seconds, tail=proc.stdout.read().strip()[-200:]))
        print(json.dumps(rows[-1]), flush=True)
    (out / "calibration.json").write_text(json.dumps(rows, indent=1))


def _scores_of(model, rrt: torch.Tensor, text: torch.Tensor, n_repeat: int, probe: S.Probe) -> dict:
    _, cache_rr = model.run_with_cache(rrt, names_filter=lambda n: n.endswith("hook_pattern"))
    rr = all_head_scores(cache_rr, n_repeat)
    del cache_rr
    _, cache_text = model.run_with_cache(text, names_filter=lambda n: n.endswith("hook_pattern") or n.endswith("hook_h_res"))
    tx = all_head_scores(cache_text)
    out = {f"rr_{k}": v.tolist() for k, v in rr.items()}
    out.update({f"text_{k}": v.tolist() for k, v in tx.items()})
    if model.cfg.residual != "residual":
        out["ds_error"] = [float(doubly_stochastic_error(h)) for h in model.h_res_matrices(cache_text)]
    del cache_text
    scr = S.screen(model, probe, batch_size=64)
    out["selectivity"] = scr.selectivity.tolist()  # [class, layer, head]
    out["labels"] = scr.labels.tolist()
    return out


@torch.no_grad()
def analyse(size: str, seeds: list[int], schemes: list[str], out: Path, n_seqs: int = 32, n_probe: int = 256) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # many small CPU ops: one thread is faster than two fighting for a core
    cfg0 = zoo.config(schemes[0], size, seeds[0])
    mcfg = cfg0.model
    n_repeat = (mcfg.n_ctx - 1) // 2
    data = load_data(cfg0.data, mcfg.d_vocab)
    text = get_batch(cfg0.text_only(batch_size=n_seqs, seed=0), data.val, 0, split_salt=5)
    rrt = repeated_random_tokens(n_repeat, n_seqs, vocab_size=mcfg.d_vocab, bos_token_id=BOS_ID, exclude_ids=[UNK_ID], seed=0)
    probe = S.probe_batch(n_probe, mcfg.n_ctx, (2, mcfg.d_vocab), 42, bos_id=BOS_ID)
    text, rrt = text.to(device), rrt.to(device)
    result = dict(size=size, config=cfg0.to_dict(), seeds=seeds, schemes=schemes, n_seqs=n_seqs, n_repeat=n_repeat,
                  probe=probe.describe(), classes=list(S.CLASSES), device=str(device),
                  gpu=torch.cuda.get_device_name() if device.type == "cuda" else None, runs={})
    path = out / f"scale_study_{size}.json.gz"
    for scheme in schemes:
        for seed in seeds:
            t0 = time.perf_counter()
            folder = zoo.run_dir(zoo.config(scheme, size, seed))
            final = load_checkpoint(folder / "final.ckpt")
            run = dict(val_loss=final["val_loss"], history={k: final["history"][k] for k in
                       ("amax_step", "amax_forward", "amax_backward")}, loss_every_100=final["history"]["loss"][::100],
                       checkpoints=[])
            for ckpt in sorted(folder.glob("step_*.ckpt")):
                state = load_checkpoint(ckpt)
                model = model_from_checkpoint(state).to(device)
                entry = dict(step=state["step"], tokens=state["tokens_seen"], **_scores_of(model, rrt, text, n_repeat, probe))
                run["checkpoints"].append(entry)
            model = model_from_checkpoint(final).to(device)
            run["ablation"] = ha.head_ablation_effects(model, text, mode="zero", batch_size=n_seqs, progress=False).tolist()
            result["runs"][f"{scheme}/{seed}"] = run
            with gzip.open(path, "wt") as f:  # after every run: an interrupted study keeps what it did
                json.dump(result, f)
            print(f"analysed {scheme} seed {seed}: {len(run['checkpoints'])} checkpoints in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return path


def summarise(path: Path) -> None:
    """Per run: the best head of each type at the last checkpoint, and when each first passed a bar."""
    with gzip.open(path, "rt") as f:
        r = json.load(f)
    print(f"{r['size']}: {r['config']['model']}, {r['config']['n_steps']} steps x {r['config']['batch_size']}")
    for key, run in r["runs"].items():
        last = run["checkpoints"][-1]

        def best(name, ck=last):
            t = torch.tensor(ck[name])
            i = int(t.argmax())
            return float(t.max()), divmod(i, t.shape[-1])

        def first(name, bar):
            for ck in run["checkpoints"]:
                if max(map(max, ck[name])) >= bar:
                    return ck["tokens"]
            return None

        parts = [f"{k}={best(k)[0]:.2f}@L{best(k)[1][0]}" for k in
                 ("text_previous_token", "rr_induction", "rr_duplicate_token", "text_first_token")]
        print(f"{key:14s} val {run['val_loss']:.3f} | {' '.join(parts)} | prev>=0.4 at {first('text_previous_token', 0.4)} "
              f"| ind>=0.4 at {first('rr_induction', 0.4)} tokens")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--copies", type=int, default=12, help="trainings at once")
    c.add_argument("--device", default="cuda")
    a = sub.add_parser("analyse")
    a.add_argument("--size", default="medium")
    a.add_argument("--seeds", nargs="*", type=int, default=list(zoo.SEEDS))
    a.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    a.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summarise")
    s.add_argument("path", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "calibrate":
        args.out.mkdir(parents=True, exist_ok=True)
        calibrate(args.out, args.steps, args.copies, args.device)
    elif args.cmd == "analyse":
        args.out.mkdir(parents=True, exist_ok=True)
        summarise(analyse(args.size, args.seeds, args.schemes, args.out))
    else:
        summarise(args.path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
