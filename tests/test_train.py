"""Training: schedule, batches, checkpoint files, determinism, resume (also after SIGKILL), zoo."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sinklens import train as T
from sinklens import zoo
from sinklens.model import GPT, GPTConfig

MICRO_MODEL = dict(n_layers=2, d_model=32, n_heads=4, n_ctx=16, d_vocab=64)


@pytest.fixture(autouse=True)
def _no_grad():  # overrides conftest's: training needs gradients
    yield


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Every test here uses its own cache, so nothing touches the real one."""
    monkeypatch.setenv("SINKLENS_CACHE", str(tmp_path_factory.mktemp("cache")))


def micro(scheme: str = "mhc", **overrides) -> T.TrainConfig:
    spec = dict(
        model=GPTConfig(**MICRO_MODEL, residual=scheme), data="synthetic", batch_size=4, n_steps=24,
        warmup_steps=4, resume_every=5, n_snapshots=6, log_every=4, lr=1e-2, name=f"micro-{scheme}",
    )
    spec.update(overrides)
    return T.TrainConfig(**spec)


def _weights(path: Path) -> dict:
    return T.load_checkpoint(path)["model"]


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- schedule, batches ----------------------------------------------------------------------------


def test_lr_warms_up_then_decays_by_cosine_to_the_floor():
    cfg = micro(n_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [T.lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_snapshot_steps_are_log_spaced_and_keep_step_0_and_early_ones():
    steps = T.snapshot_steps(2000, 24)
    assert steps[:4] == [0, 1, 2, 3] and steps[-1] == 2000
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps[-1] > 10 * gaps[1]  # dense early, sparse late
    assert sum(s <= 100 for s in steps) > len(steps) / 2


def test_batches_depend_only_on_seed_and_step_and_start_with_bos():
    cfg = micro(repeat_fraction=1.0, batch_size=64, model=GPTConfig(**{**MICRO_MODEL, "n_ctx": 64}))
    stream = T.load_data("synthetic", 64).train
    a, b = T.get_batch(cfg, stream, 7), T.get_batch(cfg, stream, 7)
    assert torch.equal(a, b) and not torch.equal(a, T.get_batch(cfg, stream, 8))
    assert (a[:, 0] == T.BOS_ID).all() and a.shape == (64, 64)
    # every row (repeat_fraction = 1) contains a span of >= n_ctx/16 tokens seen earlier in the row
    for row in a.tolist():
        grams = [tuple(row[i : i + 4]) for i in range(1, 61)]
        assert len(set(grams)) < len(grams)


def test_random_segments_repeat_at_a_varying_offset():
    cfg = micro(repeat_fraction=0.0, random_segment_fraction=1.0, random_segment_lengths=(8, 15), batch_size=64,
                model=GPTConfig(**{**MICRO_MODEL, "n_ctx": 64}))
    stream = T.load_data("synthetic", 64).train
    batch = T.get_batch(cfg, stream, 3)
    offsets = set()
    for row in batch.tolist():  # find the first 8-gram that occurs twice
        seen = {}
        for i in range(1, 57):
            gram = tuple(row[i : i + 8])
            if gram in seen:
                offsets.add(i - seen[gram])
                break
            seen[gram] = i
        else:
            raise AssertionError(f"no repeated segment in {row}")
    assert len(offsets) > 10  # the distance between the copies varies from row to row
    assert torch.equal(T.get_batch(micro(), stream, 3), T.get_batch(micro(random_segment_fraction=0.0), stream, 3))
    with pytest.raises(ValueError, match="random_segment_lengths"):
        micro(random_segment_fraction=0.5, random_segment_lengths=(8, 40), model=GPTConfig(**{**MICRO_MODEL, "n_ctx": 64}))
    with pytest.raises(ValueError, match="random_segment_fraction"):
        micro(random_segment_fraction=1.5)


def test_precision_is_resolved_part_of_the_run_id_and_applied(tmp_path):
    auto = micro()
    assert auto.precision == ("bf16" if T.cpu_has_bf16_matmul() else "fp32")
    bf16, fp32 = micro(precision="bf16"), micro(precision="fp32")
    assert bf16.run_id() != fp32.run_id()
    with pytest.raises(ValueError, match="precision"):
        micro(precision="fp16")
    a = T.load_checkpoint(T.train(dataclasses.replace(bf16, n_steps=3), tmp_path / "bf16", progress=False))
    b = T.load_checkpoint(T.train(dataclasses.replace(fp32, n_steps=3), tmp_path / "fp32", progress=False))
    assert a["history"]["loss"][0] != b["history"]["loss"][0]  # bf16 really ran: its loss differs in low bits
    assert abs(a["history"]["loss"][0] - b["history"]["loss"][0]) < 0.05
    assert all(v.dtype == torch.float32 for v in a["model"].values())  # master weights stay fp32


def test_no_bf16_hardware_means_fp32_said_once(monkeypatch, capsys):
    monkeypatch.setattr(T, "cpu_has_bf16_matmul", lambda: False)
    monkeypatch.setattr(T, "_told_fallback", False)
    assert micro().precision == "fp32" and micro().precision == "fp32"
    err = capsys.readouterr().err
    assert err.count("training in fp32") == 1


# --- checkpoint files ------------------------------------------------------------------------------


def test_checkpoint_roundtrip_and_corruption_and_truncation_are_detected(tmp_path):
    path = tmp_path / "x.ckpt"
    T.save_checkpoint(path, {"w": torch.arange(1000.0), "step": 3, "history": {"loss": [1.0, 0.5]}})
    state = T.load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(1000.0))
    raw = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]  # no temporary files left behind

    flipped = bytearray(raw)
    flipped[-100] ^= 0x01
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    with pytest.raises(T.CheckpointError, match="corrupt or truncated"):
        T.load_checkpoint(tmp_path / "flipped.ckpt")

    (tmp_path / "short.ckpt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(T.CheckpointError, match="corrupt or truncated"):
        T.load_checkpoint(tmp_path / "short.ckpt")

    (tmp_path / "tiny.ckpt").write_bytes(raw[:10])
    with pytest.raises(T.CheckpointError, match="not a sinklens checkpoint"):
        T.load_checkpoint(tmp_path / "tiny.ckpt")

    torch.save({"w": 1}, tmp_path / "plain.pt")
    with pytest.raises(T.CheckpointError, match="not a sinklens checkpoint"):
        T.load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(T.CheckpointError, match="No checkpoint"):
        T.load_checkpoint(tmp_path / "missing.ckpt")


# --- training --------------------------------------------------------------------------------------


def test_training_is_deterministic_logs_amax_and_writes_log_spaced_snapshots(tmp_path):
    cfg = micro("mhc")
    a = T.train(cfg, tmp_path / "a", progress=False)
    b = T.train(cfg, tmp_path / "b", progress=False)
    _assert_bitwise_equal(_weights(a), _weights(b))
    state = T.load_checkpoint(a)
    history = state["history"]
    assert history["loss"] == T.load_checkpoint(b)["history"]["loss"]
    assert len(history["loss"]) == cfg.n_steps
    assert history["loss"][-1] < history["loss"][0] - 0.5  # it learns the synthetic walk
    assert history["amax_step"] == [0, 4, 8, 12, 16, 20, 23]
    # mHC's Sinkhorn ends on a column normalisation: the backward (column-sum) gain is exactly 1,
    # the forward (row-sum) gain only approximately, and it drifts as the logits grow in training
    assert all(abs(g - 1) < 1e-5 for g in history["amax_backward"])
    assert all(abs(g - 1) < 2e-2 for g in history["amax_forward"])
    steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "a").glob("step_*.ckpt"))
    assert steps == T.snapshot_steps(cfg.n_steps, cfg.n_snapshots)
    assert not (tmp_path / "a" / "resume.ckpt").exists()
    assert torch.get_num_threads() >= 1 and state["val_loss"] > 0


def test_hc_logs_an_amax_gain_that_can_leave_1(tmp_path):
    cfg = micro("hc", lr=3e-2)
    history = T.load_checkpoint(T.train(cfg, tmp_path, progress=False))["history"]
    assert history["amax_forward"][0] == 1.0  # identity at init
    assert history["amax_forward"][-1] != 1.0  # unconstrained afterwards


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("scheme", ["residual", "mhc-lite"])
def test_resume_gives_bitwise_the_same_run(tmp_path, scheme, precision):
    cfg = micro(scheme, precision=precision)
    whole = T.train(cfg, tmp_path / "whole", progress=False)
    partial = T.train(cfg, tmp_path / "split", progress=False, stop_after=11)
    assert partial.name == "resume.ckpt" and T.load_checkpoint(partial)["step"] == 11
    resumed = T.train(cfg, tmp_path / "split", progress=False)
    _assert_bitwise_equal(_weights(whole), _weights(resumed))
    assert T.load_checkpoint(whole)["history"] == T.load_checkpoint(resumed)["history"]


def test_compiled_training_is_the_same_maths_resumes_bitwise_and_has_its_own_run_id(tmp_path):
    eager = micro("mhc", precision="fp32")
    compiled = dataclasses.replace(eager, compile=True)
    assert compiled.run_id() != eager.run_id()
    whole = T.train(compiled, tmp_path / "whole", progress=False)
    T.train(compiled, tmp_path / "split", progress=False, stop_after=11)
    resumed = T.train(compiled, tmp_path / "split", progress=False)
    _assert_bitwise_equal(_weights(whole), _weights(resumed))
    compiled_history = T.load_checkpoint(whole)["history"]
    assert compiled_history == T.load_checkpoint(resumed)["history"]
    # other kernels, same function: the first loss (same weights, same batch) agrees to float
    # precision, the curve stays close, and the Amax gain is still logged every log_every steps
    eager_history = T.load_checkpoint(T.train(eager, tmp_path / "eager", progress=False))["history"]
    assert compiled_history["loss"][0] == pytest.approx(eager_history["loss"][0], rel=1e-5)
    assert compiled_history["loss"][-1] == pytest.approx(eager_history["loss"][-1], rel=2e-2)
    assert compiled_history["amax_step"] == eager_history["amax_step"]
    assert compiled_history["amax_forward"][0] == pytest.approx(eager_history["amax_forward"][0], abs=1e-6)


def test_compiling_without_a_cpp_compiler_is_a_clear_error(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    # inductor's own patch: monkeypatch's undo left cpp.cxx missing for later compiles in the process
    with inductor_config.patch({"cpp.cxx": ("no-such-compiler++",)}), \
            pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        T.train(micro("residual", compile=True), tmp_path, progress=False)


def test_resume_after_sigkill_gives_bitwise_the_same_run(tmp_path):
    """Really kill a training process (SIGKILL, no cleanup) mid-run, then resume it."""
    cfg = micro("mhc", n_steps=80, resume_every=5, n_snapshots=8)
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, "-m", "sinklens.train", "--config", json.dumps(cfg.to_dict()),
           "--out", str(killed_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed_dir / "resume.ckpt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training never wrote a resume checkpoint"
            time.sleep(0.02)
        time.sleep(0.1)  # let it run on past the checkpoint, then kill it mid-step
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "final.ckpt").exists(), "the run finished before it was killed"
    killed_at = T.load_checkpoint(killed_dir / "resume.ckpt")["step"]
    assert 0 < killed_at < cfg.n_steps

    resumed = T.train(cfg, killed_dir, progress=False)
    whole = T.train(cfg, whole_dir, progress=False)
    _assert_bitwise_equal(_weights(whole), _weights(resumed))
    assert T.load_checkpoint(whole)["history"] == T.load_checkpoint(resumed)["history"]
    for snap in whole_dir.glob("step_*.ckpt"):
        _assert_bitwise_equal(_weights(snap), _weights(killed_dir / snap.name))


def test_a_finished_run_is_never_overwritten(tmp_path):
    cfg = micro("residual", n_steps=6)
    final = T.train(cfg, tmp_path, progress=False)
    before = (final.read_bytes(), final.stat().st_mtime_ns)
    assert T.train(cfg, tmp_path, progress=False) == final  # same run: found, not retrained
    other = micro("residual", n_steps=6, seed=1)
    with pytest.raises(T.RunMismatchError, match="not"):
        T.train(other, tmp_path, progress=False)
    assert (final.read_bytes(), final.stat().st_mtime_ns) == before


def test_a_directory_claimed_by_another_run_is_refused_before_any_checkpoint_exists(tmp_path):
    """run.json alone (a run that has just started) is enough to keep a different run out."""
    first = micro("residual", n_steps=6)
    T.train(first, tmp_path, progress=False, stop_after=0)
    for ckpt in tmp_path.glob("*.ckpt"):
        ckpt.unlink()
    claimed = (tmp_path / "run.json").read_text()
    with pytest.raises(T.RunMismatchError, match="Use another --out directory"):
        T.train(micro("residual", n_steps=6, seed=1), tmp_path, progress=False)
    assert (tmp_path / "run.json").read_text() == claimed
    assert not list(tmp_path.glob("*.ckpt")), "the other run wrote checkpoints into a claimed directory"


def test_a_reader_never_sees_a_half_written_checkpoint(tmp_path):
    """Atomic writes: while one thread rewrites a ~8 MB checkpoint again and again, another keeps
    loading it; every load must verify (a write in place would expose truncated files)."""
    import threading

    path = tmp_path / "x.ckpt"
    payloads = [{"w": torch.full((1024, 1024, 2), float(i))} for i in range(2)]
    T.save_checkpoint(path, payloads[0])
    done, errors, loads = threading.Event(), [], [0]

    def reader():
        while not done.is_set():
            try:
                T.load_checkpoint(path)
                loads[0] += 1
            except T.CheckpointError as e:
                errors.append(str(e))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            T.save_checkpoint(path, payloads[i % 2])
    finally:
        done.set()
        thread.join()
    assert loads[0] > 0
    assert not errors, f"{len(errors)} of {len(errors) + loads[0]} loads saw a damaged file: {errors[0]}"
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"], "temporary files were left behind"


def test_a_corrupt_resume_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    cfg = micro("residual")
    T.train(cfg, tmp_path, progress=False, stop_after=5)
    resume = tmp_path / "resume.ckpt"
    resume.write_bytes(resume.read_bytes()[:-50])
    with pytest.raises(T.CheckpointError, match="corrupt or truncated"):
        T.train(cfg, tmp_path, progress=False)


def test_cli_accepts_json_and_zoo_names(tmp_path, capsys):
    cfg = micro("mhc-lite", n_steps=4)
    assert T.main(["--config", json.dumps(cfg.to_dict()), "--out", str(tmp_path), "--no-progress"]) == 0
    assert "done:" in capsys.readouterr().out
    assert T.train_config_from_arg("tiny-mhc-lite").model.residual == "mhc-lite"
    with pytest.raises(ValueError, match="Unknown zoo config"):
        T.train_config_from_arg("tiny-mhc3")


# --- zoo -------------------------------------------------------------------------------------------


def test_zoo_trains_the_longest_runs_first():
    cfgs = [zoo.config(scheme, size, seed) for seed in (0, 1) for size in ("tiny", "small") for scheme in zoo.SCHEMES]
    order = zoo.longest_first(cfgs)
    assert sorted(map(id, order)) == sorted(map(id, cfgs))
    assert [(c.name, c.seed) for c in order[:2]] == [("small-mhc", 0), ("small-mhc", 1)]  # stable among equals
    assert order[-1].name == "tiny-residual"
    costs = [zoo.RELATIVE_STEP_COST[c.model.residual] * c.model.n_layers for c in order]
    assert costs == sorted(costs, reverse=True)


def test_zoo_configs_cover_every_scheme_and_size():
    for size in zoo.SIZES:
        for scheme in ("residual", "hc", "mhc", "mhc-lite"):
            cfg = zoo.config(scheme, size, seed=1)
            assert cfg.model.residual == scheme and cfg.seed == 1
            assert cfg.model.n_streams == (1 if scheme == "residual" else 4)
            assert zoo.run_dir(cfg).name.endswith(cfg.run_id())
    assert zoo.config("mhc", "small").run_id() != zoo.config("mhc", "small", seed=1).run_id()
    with pytest.raises(ValueError, match="Unknown zoo size"):
        zoo.config("mhc", "huge")


def test_zoo_trains_once_then_loads_checkpoints_into_run_with_cache(monkeypatch):
    monkeypatch.setitem(zoo.SIZES, "micro", dict(
        model=MICRO_MODEL, data="synthetic", batch_size=4, n_steps=12, warmup_steps=2,
        n_snapshots=5, resume_every=5,
    ))
    model = zoo.get("mhc", "micro", progress=False)
    assert isinstance(model, GPT) and not model.training and len(model.vocab) == 64
    final = zoo.run_dir(zoo.config("mhc", "micro")) / "final.ckpt"
    mtime = final.stat().st_mtime_ns
    checkpoints = zoo.load_checkpoints("mhc", "micro", progress=False)
    assert final.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert [s for s, _, _ in checkpoints] == T.snapshot_steps(12, 5)
    assert [t for _, t, _ in checkpoints] == [s * 4 * 16 for s, _, _ in checkpoints]
    _, cache = checkpoints[-1][2].run_with_cache(torch.zeros(1, 8, dtype=torch.long))
    assert cache["pattern", 0].shape == (1, 4, 8, 8)
    _assert_bitwise_equal(checkpoints[-1][2].state_dict(), model.state_dict())
    history = zoo.training_history("mhc", "micro", progress=False)
    assert len(history["loss"]) == 12 and history["val_loss"] > 0


# --- devices -------------------------------------------------------------------------------------


def test_device_is_checked_and_part_of_the_run_id_except_for_the_cpu():
    cfg = micro()
    assert cfg.device == "cpu" and cfg.n_tokens == 24 * 4 * 16
    assert dataclasses.replace(cfg, device="cuda").run_id() != cfg.run_id()
    # the zoo keeps its run ids, so cached models stay valid: a change here retrains the zoo (on a
    # machine with bf16 matrix instructions; elsewhere the precision, and so the id, differs).
    # Fields added later (device, compile) leave the ids of runs that do not use them unchanged.
    if T.cpu_has_bf16_matmul():
        # CPU_CODE_VERSION 2 (the native attention kernel) and COMPILED_CODE_VERSION 3 (the
        # logsumexp loss): tiny 128a2158a5, small 8a08e5fc12 and the eager small d59bcfa217 before
        # them; small 6751de0956 before COMPILED_CODE_VERSION 2
        assert zoo.config("residual", "tiny", 0).run_id() == "74103a5b64"
        small = zoo.config("residual", "small", 0)
        assert small.compile and small.run_id() == "d696f23906"
        assert dataclasses.replace(small, compile=False).run_id() == "99495b297c"  # the eager zoo's
    with pytest.raises(ValueError, match="device must be"):
        micro(device="tpu")


def test_a_streams_code_change_retrains_the_multi_stream_schemes_only(monkeypatch):
    before = {scheme: zoo.config(scheme, "small", 0).run_id() for scheme in ("residual", "hc", "mhc", "mhc-lite")}
    monkeypatch.setattr(T, "STREAMS_CODE_VERSION", T.STREAMS_CODE_VERSION + 1)
    after = {scheme: zoo.config(scheme, "small", 0).run_id() for scheme in before}
    assert after["residual"] == before["residual"]
    assert all(after[s] != before[s] for s in ("hc", "mhc", "mhc-lite"))
    # without the C kernels (no compiler) CPU runs round differently (attention, and the streams of
    # the multi-stream schemes): other ids; GPU runs use no C kernel, so their ids stay
    from sinklens import native

    gpu = {scheme: dataclasses.replace(zoo.config(scheme, "small", 0), device="cuda") for scheme in before}
    gpu_ids = {scheme: cfg.run_id() for scheme, cfg in gpu.items()}
    monkeypatch.setattr(native, "available", lambda: False)
    fallback = {scheme: zoo.config(scheme, "small", 0).run_id() for scheme in before}
    assert all(fallback[s] not in (before[s], after[s]) for s in before)
    assert {scheme: cfg.run_id() for scheme, cfg in gpu.items()} == gpu_ids


def test_a_cpu_code_change_retrains_the_cpu_runs_only(monkeypatch):
    cpu = zoo.config("residual", "small", 0)
    gpu = dataclasses.replace(cpu, device="cuda")
    before = cpu.run_id(), gpu.run_id()
    monkeypatch.setattr(T, "CPU_CODE_VERSION", T.CPU_CODE_VERSION + 1)
    assert cpu.run_id() != before[0]
    assert gpu.run_id() == before[1]


def test_a_compiled_code_change_retrains_the_compiled_runs_only(monkeypatch):
    compiled, eager = zoo.config("residual", "small", 0), zoo.config("residual", "tiny", 0)
    assert compiled.compile and not eager.compile
    before = compiled.run_id(), eager.run_id()
    monkeypatch.setattr(T, "COMPILED_CODE_VERSION", T.COMPILED_CODE_VERSION + 1)
    assert compiled.run_id() != before[0]
    assert eager.run_id() == before[1]


def test_a_gpu_run_on_a_machine_without_one_is_a_clear_error_but_a_finished_one_loads(tmp_path, monkeypatch):
    assert zoo.config("mhc", "medium").device == "cuda"
    # the GPU size's run id does not depend on where its config is built (so a copied GPU run is found)
    assert zoo.config("mhc", "medium").precision == "bf16"
    finished = T.train(micro("residual", n_steps=3), tmp_path / "cpu", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="configured to train on a CUDA GPU"):
        T.train(micro("residual", n_steps=3, device="cuda"), tmp_path / "gpu", progress=False)
    assert not list((tmp_path / "gpu").glob("*.ckpt"))
    # a finished run is returned without training, whatever its device (here: patch the stored config)
    gpu_cfg = micro("residual", n_steps=3, device="cuda")
    state = T.load_checkpoint(finished)
    state.update(run_id=gpu_cfg.run_id(), config=gpu_cfg.to_dict())
    (tmp_path / "gpu2").mkdir()
    (tmp_path / "gpu2" / "run.json").write_text(json.dumps({"run_id": gpu_cfg.run_id(), "config": gpu_cfg.to_dict()}))
    T.save_checkpoint(tmp_path / "gpu2" / "final.ckpt", state)
    assert T.train(gpu_cfg, tmp_path / "gpu2", progress=False) == tmp_path / "gpu2" / "final.ckpt"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_starts_from_the_cpu_initial_weights_and_loads_on_the_cpu(tmp_path):
    cfg = micro("mhc", n_steps=6, device="cuda")
    T.train(cfg, tmp_path, progress=False)
    cpu_init = T.load_checkpoint(T.train(micro("mhc", n_steps=6), tmp_path / "cpu", progress=False).parent / "step_000000.ckpt")
    gpu_init = T.load_checkpoint(tmp_path / "step_000000.ckpt")
    _assert_bitwise_equal(gpu_init["model"], cpu_init["model"])
    model = T.model_from_checkpoint(T.load_checkpoint(tmp_path / "final.ckpt"))
    assert next(model.parameters()).device.type == "cpu"


def test_keeping_freed_memory_changes_no_bit_of_a_run(tmp_path):
    """reuse_freed_memory changes where a step's memory comes from, never what it computes: the CLI
    (which turns it on) ends bitwise equal to a process that keeps glibc's defaults. Eager; the
    compiled zoo runs the same allocator calls on other kernels."""
    cfg = micro("mhc", model=GPTConfig(n_layers=2, d_model=128, n_heads=4, n_ctx=64, d_vocab=256, residual="mhc"),
                batch_size=16, n_steps=8, resume_every=100)  # activations of 0.5-2 MiB: above glibc's 128 KiB mmap threshold
    script = (
        "import sys, json\n"
        "from sinklens import train as T\n"
        "if sys.argv[3] == 'cli':\n"
        "    T.main(['--config', sys.argv[1], '--out', sys.argv[2], '--no-progress'])\n"
        "else:\n"
        "    T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False)\n"
        "print('kept:', T._reused_freed_memory)\n"
    )
    runs = {}
    for how in ("cli", "library"):
        out = subprocess.run([sys.executable, "-c", script, json.dumps(cfg.to_dict()), str(tmp_path / how), how],
                             check=True, env=os.environ.copy(), timeout=300, capture_output=True, text=True).stdout
        runs[how] = out.strip().splitlines()[-1]
    glibc = platform.libc_ver()[0] == "glibc"
    assert runs == {"cli": f"kept: {glibc}", "library": "kept: None"}  # a library call leaves the process alone
    cli, library = tmp_path / "cli" / "final.ckpt", tmp_path / "library" / "final.ckpt"
    _assert_bitwise_equal(_weights(cli), _weights(library))
    assert T.load_checkpoint(cli)["history"] == T.load_checkpoint(library)["history"]
