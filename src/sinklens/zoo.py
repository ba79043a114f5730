"""The model zoo: named training configs per residual scheme, trained once and cached.

Sizes (all GPT-2-style, see :mod:`sinklens.model`; data and tokeniser in :mod:`sinklens.train`):

- ``tiny``: 4 layers, d_model 128, 4 heads, context 64, vocab 2048, 3000 steps of 32 x 64 tokens
  (6.1M tokens). For CI and tests; it still forms a confirmed previous-token -> induction circuit
  (``tests/test_zoo_formation.py``; 2 and 3 layers did not pass the screen).
- ``small``: 6 layers, d_model 128, 4 heads, context 64, vocab 2048, 3000 steps of 32 x 64 tokens
  (6.1M tokens). For the book. Trained through ``torch.compile`` (``TrainConfig.compile``: 0.71-0.76x
  the eager step time; ``tiny`` and ``medium`` train eager).
- ``medium``: 6 layers, d_model 256, 8 heads, context 256, vocab 4096, 3000 steps of 64 x 256
  tokens (49M tokens), trained on a CUDA GPU in bf16 (``device="cuda"``; a CPU-only machine gets a clear
  error). For the scale study (``scripts/scale_study.py``).

All sizes use rotary positions and :data:`RECIPE`'s data mixture (random-token segments repeated
at a varying offset in half the rows); ``tiny`` leaves out the repeated spans of text.

Every size exists for each scheme in :data:`sinklens.hyperconnections.SCHEMES` (multi-stream
schemes use n = 4 streams) and any seed; :data:`SEEDS` are the ones the book uses. Runs live in
``sinklens.cache.cache_dir() / "zoo" / "<size>-<scheme>-seed<seed>-<run id>"``; the run id hashes
the whole config, so changing a config never reuses or overwrites an old run.

- :func:`get` returns the trained model (training it first, with a progress bar, if missing).
- :func:`load_checkpoints` returns ``[(step, tokens_seen, model), ...]`` along training.
- ``python -m sinklens.zoo --size small --jobs 2`` trains every missing model of a size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sinklens.cache import cache_dir
from sinklens.hyperconnections import SCHEMES
from sinklens.model import GPT, GPTConfig
from sinklens.models import ModelInfo
from sinklens.train import TrainConfig, load_checkpoint, model_from_checkpoint, reuse_freed_memory, train

SEEDS = (0, 1, 2)

# The data and position recipe every size shares (see the README's zoo section for how it was
# chosen): rotary positions on queries and keys, a quarter of the rows with a repeated span of
# their own text, and half the rows with a repeated segment of 8-31 random token ids.
RECIPE = dict(repeat_fraction=0.25, random_segment_fraction=0.5, random_segment_lengths=(8, 31))
SINKHORN_TOL = None  # mHC: the paper's fixed 20 Sinkhorn iterations (a tolerance saved nothing: see the README)

SIZES: dict[str, dict] = {
    "tiny": dict(
        model=dict(n_layers=4, d_model=128, n_heads=4, n_ctx=64, d_vocab=2048, positional="rotary"),
        batch_size=32,
        n_steps=3000,
        lr=3e-3,
        warmup_steps=100,
        n_snapshots=16,
        resume_every=250,
        **{**RECIPE, "repeat_fraction": 0.0},
    ),
    "small": dict(
        model=dict(n_layers=6, d_model=128, n_heads=4, n_ctx=64, d_vocab=2048, positional="rotary"),
        batch_size=32,
        n_steps=3000,
        lr=3e-3,
        warmup_steps=100,
        n_snapshots=24,
        resume_every=250,
        compile=True,
        **RECIPE,
    ),
    "medium": dict(
        model=dict(n_layers=6, d_model=256, n_heads=8, n_ctx=256, d_vocab=4096, positional="rotary"),
        batch_size=64,
        n_steps=3000,
        lr=1e-3,
        warmup_steps=150,
        n_snapshots=24,
        resume_every=500,
        device="cuda",
        # bf16, not "auto": "auto" resolves on the machine that builds the config, so on one without
        # a GPU it said fp32 and gave the run another id than the GPU run it is meant to find
        precision="bf16",
        **RECIPE,
    ),
}


def config(scheme: str, size: str = "small", seed: int = 0) -> TrainConfig:
    """The training config of the zoo model ``(scheme, size, seed)``."""
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown residual scheme {scheme!r}; expected one of {SCHEMES}.")
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r}; expected one of {tuple(SIZES)}.")
    spec = dict(SIZES[size])
    model = GPTConfig(**spec.pop("model"), residual=scheme, sinkhorn_tol=SINKHORN_TOL if scheme == "mhc" else None)
    return TrainConfig(model=model, seed=seed, name=f"{size}-{scheme}", **spec)


def config_by_name(name: str) -> TrainConfig:
    """``"<size>-<scheme>"`` (e.g. ``"tiny-mhc-lite"``) -> its config, seed 0."""
    size, _, scheme = name.partition("-")
    if size not in SIZES or scheme not in SCHEMES:
        names = [f"{s}-{r}" for s in SIZES for r in SCHEMES]
        raise ValueError(f"Unknown zoo config {name!r}; expected one of {names}.")
    return config(scheme, size)


def model_info(size: str, description: str) -> ModelInfo:
    """Provenance of the zoo models of ``size`` for a chapter's header and results JSON."""
    return ModelInfo(
        name=f"sinklens-zoo-{size}", requested=f"sinklens-zoo-{size}", description=description,
        is_gpt2=False, source=f"trained offline by sinklens.train (sinklens.zoo), {training_precision(size)}",
        positional="rotary" if config("residual", size).model.positional == "rotary" else "learned absolute",
        trained_here=True,
    )


def training_precision(size: str) -> str:
    """How the models of ``size`` train, in words: ``"bf16 autocast on the CPU"`` and the like."""
    cfg = config("residual", size)
    where = "a CUDA GPU" if cfg.device.startswith("cuda") else "the CPU"
    how = f"{'bf16 autocast (fp32 master weights)' if cfg.precision == 'bf16' else 'fp32'} on {where}"
    return how + (", torch.compile'd" if cfg.compile else "")


def run_dir(cfg: TrainConfig) -> Path:
    """Where the zoo keeps the run of ``cfg``."""
    return cache_dir() / "zoo" / f"{cfg.name}-seed{cfg.seed}-{cfg.run_id()}"


def is_trained(scheme: str, size: str = "small", seed: int = 0) -> bool:
    return (run_dir(config(scheme, size, seed)) / "final.ckpt").exists()


def get(scheme: str, size: str = "small", seed: int = 0, progress: bool = True) -> GPT:
    """The trained zoo model (eval mode, ``model.vocab`` attached); trains it first if missing."""
    cfg = config(scheme, size, seed)
    final = train(cfg, run_dir(cfg), progress=progress)  # returns at once if already trained
    return model_from_checkpoint(load_checkpoint(final))


def training_history(scheme: str, size: str = "small", seed: int = 0, progress: bool = True) -> dict:
    """Loss (every step) and Amax gain (every ``log_every`` steps) of a zoo run, plus val loss."""
    cfg = config(scheme, size, seed)
    state = load_checkpoint(train(cfg, run_dir(cfg), progress=progress))
    return {**state["history"], "val_loss": state["val_loss"]}


def load_checkpoints(
    scheme: str, size: str = "small", seed: int = 0, progress: bool = True
) -> list[tuple[int, int, GPT]]:
    """``[(step, tokens_seen, model), ...]`` at every saved (log-spaced) step, in order.

    Trains the run first if it is missing. Step 0 is the untrained model.
    """
    cfg = config(scheme, size, seed)
    folder = run_dir(cfg)
    train(cfg, folder, progress=progress)
    out = []
    for path in sorted(folder.glob("step_*.ckpt")):
        state = load_checkpoint(path)
        out.append((state["step"], state["tokens_seen"], model_from_checkpoint(state)))
    return out


# Cost of a training step relative to the residual scheme (small size, one thread, bf16; measured
# with benchmarks/bench_training.py on 2026-12-03): orders the zoo's trainings longest first.
RELATIVE_STEP_COST = {"residual": 1.0, "hc": 1.95, "mhc": 2.2, "mhc-lite": 2.03}


def longest_first(cfgs: list[TrainConfig]) -> list[TrainConfig]:
    """``cfgs`` ordered by expected training time, longest first (stable among equals).

    With ``jobs`` trainings at a time, starting the long ones first keeps one core from idling at
    the end while the other finishes a long run (longest-processing-time-first scheduling).
    """
    def cost(cfg: TrainConfig) -> float:
        return RELATIVE_STEP_COST[cfg.model.residual] * cfg.model.n_layers * cfg.n_steps * cfg.tokens_per_step

    return sorted(cfgs, key=cost, reverse=True)


def train_missing(
    size: str = "small", schemes=SCHEMES, seeds=SEEDS, jobs: int = 1, progress: bool = True
) -> None:
    """Train every zoo model of ``size`` not in the cache yet, ``jobs`` trainings at a time.

    Each training uses one thread (``TrainConfig.threads``), so ``jobs`` = the number of cores
    uses the machine fully (two one-thread trainings beat one two-thread training by 1.16x (residual) to 1.36x (mHC) on
    2 cores: the README's benchmarks). Trainings start longest first (:func:`longest_first`).
    With ``jobs > 1`` each training is a ``python -m sinklens.train`` subprocess (progress bars off).
    """
    todo = [config(scheme, size, seed) for seed in seeds for scheme in schemes]
    todo = longest_first([cfg for cfg in todo if not (run_dir(cfg) / "final.ckpt").exists()])
    if jobs <= 1:
        for cfg in todo:
            train(cfg, run_dir(cfg), progress=progress)
        return
    import subprocess
    import time

    running: list[tuple[subprocess.Popen, TrainConfig]] = []
    while todo or running:
        while todo and len(running) < jobs:
            cfg = todo.pop(0)
            cmd = [sys.executable, "-m", "sinklens.train", "--config", cfg.name, "--seed", str(cfg.seed),
                   "--out", str(run_dir(cfg)), "--no-progress"]
            running.append((subprocess.Popen(cmd), cfg))
        time.sleep(0.5)
        for proc, cfg in list(running):
            if proc.poll() is not None:
                running.remove((proc, cfg))
                if proc.returncode != 0:
                    raise RuntimeError(f"Training {cfg.name} seed {cfg.seed} failed (exit {proc.returncode}).")
                if progress:
                    print(f"trained {cfg.name} seed {cfg.seed} -> {run_dir(cfg)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinklens.zoo", description="Train missing zoo models.")
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (one thread each)")
    args = parser.parse_args(argv)
    if config("residual", args.size).device == "cpu":  # as python -m sinklens.train does
        reuse_freed_memory()  # a process that only trains (with --jobs 1 it trains in-process)
    train_missing(args.size, args.schemes, args.seeds, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
