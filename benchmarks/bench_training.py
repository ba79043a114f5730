"""Training-step cost: the default loop against the fp32 reference, the residual schemes, and HF.

Prints ratios measured side by side in one run: every round times one training step of every
contender in turn (so slow drifts in machine load hit all of them alike), and each figure is the
median over rounds. A step is what ``sinklens.train`` does: batch, forward (under the run's
precision), loss, backward, gradient clipping, AdamW. Wall-clock and process CPU time are both
reported: on a machine shared with other work, CPU time is the steadier measure.

Contenders, all on the zoo's config of ``--size`` (default ``small``, the book's):

- ``fp32-reference``: the residual model as the loop trained it before the fast path: fp32,
  attention computed explicitly (scores, softmax, pattern), Sinkhorn with a fixed 20 iterations.
- ``residual``, ``hc``, ``mhc``, ``mhc-lite``: the zoo's loop for that size (``TrainConfig.precision``
  auto: bf16 autocast where the CPU has bf16 matrix instructions; fused attention; the zoo's
  Sinkhorn settings; ``torch.compile`` and fused AdamW where the config has ``compile``, with the
  compile time printed apart).
- ``residual-eager``, ``mhc-eager`` (compiled sizes only): the same without ``torch.compile``.
- ``hf-gpt2``: a Hugging Face ``GPT2LMHeadModel`` of the same shape, in the same precision, and
  compiled when ours is.

    python benchmarks/bench_training.py [--size small] [--rounds 15] [--threads 1] [--json]
    python benchmarks/bench_training.py --jobs-vs-threads [--size small]

``--jobs-vs-threads`` answers how to use two cores: it times one training process with two
torch threads, then two processes with one thread each at once, for the residual and mHC
models on the zoo's own loop (compiled where the size's config is), and prints the zoo's throughput (training steps per second, all processes together)
both ways.

Every contender runs with the allocator setting the zoo's trainings use
(:func:`sinklens.train.reuse_freed_memory`: glibc keeps freed blocks instead of page-faulting them
in again every step), so the ratios compare the code, not the allocator;
``--default-allocator`` leaves glibc's default, to measure what the setting saves.

``--json`` ends the output with one JSON line: ``speedup_vs_fp32_reference``, ``mhc_over_residual``,
``hc_over_residual``, ``mhc_lite_over_mhc``, ``ours_over_hf`` (wall-clock ratios), the CPU's
bf16 features and the precision used. Targets (issue 14): speedup >= 2.5, mHC / residual <= 1.25,
mHC-lite / mHC <= 1.0, ours / HF >= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sinklens import zoo
from sinklens.model import GPT, Attention
from sinklens.train import autocast, cpu_has_bf16_matmul, get_batch, load_data, reuse_freed_memory


def hf_gpt2(cfg) -> torch.nn.Module:
    """A ``GPT2LMHeadModel`` of the same shape: no dropout, tied embeddings, GPT-2's GELU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(hf_cfg)


def make_step(model: torch.nn.Module, precision_ctx, *, is_hf: bool = False, fused: bool = True,
              compiled: bool = False):
    """One training step of ``model``; ``compiled``: as ``TrainConfig.compile`` (torch.compile, fused AdamW)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                            fused=True if compiled else None)
    forward = torch.compile(model) if compiled else model

    def step(batch: torch.Tensor) -> None:
        Attention.fused = fused
        try:
            with precision_ctx():
                if is_hf:
                    loss = forward(input_ids=batch, labels=batch).loss
                else:
                    loss = forward(batch, return_type="loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        finally:
            Attention.fused = True

    return step


def cpu_features() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return platform.processor() or "unknown CPU"
    names = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model} ({', '.join(names) or 'no AVX-512 / AMX'})"


def _worker(scheme: str, size: str, threads: int, steps: int) -> None:
    """One training process for --jobs-vs-threads: prints its median seconds per step."""
    torch.set_num_threads(threads)
    cfg = zoo.config(scheme, size)
    data = load_data(cfg.data, cfg.model.d_vocab)
    torch.manual_seed(0)
    step = make_step(GPT(cfg.model), lambda: autocast(cfg), compiled=cfg.compile)  # the zoo's own loop
    times = []  # the first steps (compiling, when compiled) are left out
    for s in range(steps + 3):
        t0 = time.perf_counter()
        step(get_batch(cfg, data.train, s))
        if s >= 3:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"s_per_step": statistics.median(times)}), flush=True)


def jobs_vs_threads(size: str, steps: int = 20, default_allocator: bool = False) -> dict:
    """Zoo throughput on two cores: one process with two threads against two with one each."""
    import subprocess
    import sys

    def launch(scheme: str, threads: int) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--worker", scheme, "--size", size, "--threads", str(threads),
               "--rounds", str(steps)] + (["--default-allocator"] if default_allocator else [])
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def seconds(proc: subprocess.Popen) -> float:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark worker failed (exit {proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])["s_per_step"]

    result = {}
    for scheme in ("residual", "mhc"):
        one = seconds(launch(scheme, 2))
        pair = [launch(scheme, 1) for _ in range(2)]
        two = [seconds(p) for p in pair]
        result[scheme] = {"one_process_2_threads_steps_per_s": 1 / one,
                          "two_processes_1_thread_steps_per_s": sum(1 / t for t in two)}
        r = result[scheme]
        r["two_processes_over_one"] = r["two_processes_1_thread_steps_per_s"] / r["one_process_2_threads_steps_per_s"]
        print(f"  {scheme:9s} one process, 2 threads: {r['one_process_2_threads_steps_per_s']:.2f} steps/s; "
              f"two processes, 1 thread each: {r['two_processes_1_thread_steps_per_s']:.2f} steps/s together "
              f"({r['two_processes_over_one']:.2f}x)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=tuple(zoo.SIZES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the ratios")
    parser.add_argument("--jobs-vs-threads", action="store_true",
                        help="two cores: one training with 2 threads, or two with 1 thread each?")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc settings alone (the zoo's trainings keep freed blocks)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kept = False if args.default_allocator else reuse_freed_memory()
    if args.worker:
        return _worker(args.worker, args.size, args.threads, args.rounds)
    if args.jobs_vs_threads:
        result = jobs_vs_threads(args.size, default_allocator=args.default_allocator)
        if args.json:
            print(json.dumps(result))
        return None
    torch.set_num_threads(args.threads)

    base = zoo.config("residual", args.size)
    data = load_data(base.data, base.model.d_vocab)
    batches = [get_batch(base, data.train, s) for s in range(args.rounds + 3)]
    fp32 = dataclasses.replace(base, precision="fp32")
    contenders = {}
    torch.manual_seed(0)
    reference_cfg = dataclasses.replace(base.model, sinkhorn_tol=None)
    contenders["fp32-reference"] = make_step(GPT(reference_cfg), lambda: autocast(fp32), fused=False)
    compile_s = {}  # seconds of the first (compiling) step

    def add(name: str, step, compiled: bool) -> None:
        if compiled:
            t0 = time.perf_counter()
            step(batches[0])
            compile_s[name] = time.perf_counter() - t0
        contenders[name] = step

    # the zoo's loop for each scheme (compiled where its config says so), and eager beside it
    for scheme in ("residual", "hc", "mhc", "mhc-lite"):
        cfg = zoo.config(scheme, args.size)
        torch.manual_seed(0)
        add(scheme, make_step(GPT(cfg.model), lambda cfg=cfg: autocast(cfg), compiled=cfg.compile), cfg.compile)
        if cfg.compile and scheme in ("residual", "mhc"):
            torch.manual_seed(0)
            add(f"{scheme}-eager", make_step(GPT(cfg.model), lambda cfg=cfg: autocast(cfg)), False)
    torch.manual_seed(0)  # Hugging Face's GPT-2 in the same precision, and compiled if ours is
    add("hf-gpt2", make_step(hf_gpt2(base.model), lambda: autocast(base), is_hf=True, compiled=base.compile),
        base.compile)

    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for r, batch in enumerate(batches):
        for name, step in contenders.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step(batch)
            if r >= 3:  # the first rounds warm up allocators and caches
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    tokens = base.tokens_per_step

    m = base.model
    print(f"size {args.size}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, context {m.n_ctx}, "
          f"vocab {m.d_vocab}, {m.positional} positions, batch {base.batch_size}; n = 4 streams; "
          f"precision {base.precision}; torch.compile {base.compile}; mHC Sinkhorn tolerance {zoo.config('mhc', args.size).model.sinkhorn_tol}; "
          f"{args.threads} torch thread(s); "
          f"median of {args.rounds} interleaved rounds")
    print(f"CPU: {cpu_features()}; bf16 matrix instructions: {cpu_has_bf16_matmul()}; "
          f"freed blocks kept for reuse (reuse_freed_memory): {kept}")
    print(f"  {'':18s} {'wall ms/step':>13s} {'tokens/s':>9s} {'CPU ms/step':>12s} {'tokens/CPU s':>13s}")
    for name in contenders:
        w, c = med[name], med_cpu[name]
        print(f"  {name:18s} {1000 * w:13.1f} {tokens / w:9.0f} {1000 * c:12.1f} {tokens / c:13.0f}")
    ratios = {
        "speedup_vs_fp32_reference": med["fp32-reference"] / med["residual"],
        "mhc_over_residual": med["mhc"] / med["residual"],
        "hc_over_residual": med["hc"] / med["residual"],
        "mhc_lite_over_mhc": med["mhc-lite"] / med["mhc"],
        "ours_over_hf": med["hf-gpt2"] / med["residual"],
    }
    cpu_ratios = {
        "speedup_vs_fp32_reference": med_cpu["fp32-reference"] / med_cpu["residual"],
        "mhc_over_residual": med_cpu["mhc"] / med_cpu["residual"],
        "hc_over_residual": med_cpu["hc"] / med_cpu["residual"],
        "mhc_lite_over_mhc": med_cpu["mhc-lite"] / med_cpu["mhc"],
        "ours_over_hf": med_cpu["hf-gpt2"] / med_cpu["residual"],
    }
    targets = {"speedup_vs_fp32_reference": ">= 2.5", "mhc_over_residual": "<= 1.25", "hc_over_residual": "",
               "mhc_lite_over_mhc": "<= 1.0", "ours_over_hf": ">= 1.0"}
    print("ratios: wall-clock | CPU time (target)")
    for key, value in ratios.items():
        print(f"  {key:28s} {value:5.2f} | {cpu_ratios[key]:5.2f}  {targets[key]}")
    for scheme in ("residual", "mhc"):
        if f"{scheme}-eager" in med:
            seconds = compile_s[scheme]
            saved = med[f"{scheme}-eager"] - med[scheme]
            steps = zoo.config(scheme, args.size).n_steps
            print(f"  torch.compile {scheme}: {seconds:.0f} s to compile, {1000 * saved:+.1f} ms/step saved "
                  f"-> {saved * steps - seconds:+.0f} s over one {steps}-step zoo training")
            ratios[f"{scheme}_compiled_over_eager"] = med[scheme] / med[f"{scheme}-eager"]
            ratios[f"{scheme}_compile_s"] = seconds
    if "mhc-eager" in med:
        ratios["eager_mhc_over_residual"] = med["mhc-eager"] / med["residual-eager"]
        ratios["eager_speedup_vs_fp32_reference"] = med["fp32-reference"] / med["residual-eager"]
    if args.json:
        print(json.dumps({**{k: round(v, 3) for k, v in ratios.items()}, "cpu_time_ratios": {
            k: round(v, 3) for k, v in cpu_ratios.items()}, "precision": base.precision, "cpu": cpu_features(),
            "size": args.size, "threads": args.threads, "reuse_freed_memory": kept}))


if __name__ == "__main__":
    main()
