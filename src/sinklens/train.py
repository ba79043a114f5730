"""Train a :class:`sinklens.model.GPT` on CPU (or a CUDA GPU), deterministically, with checkpoints along the way.

Data and tokeniser
------------------
- Text: the offline corpus of :func:`sinklens.data.offline_documents` (State of the Union
  addresses and Python standard-library source; NOT the Pile). Every 50th document is held out
  for validation.
- Tokeniser: GPT-2's BPE (:func:`sinklens.data.gpt2_tokenizer`), restricted to the corpus's
  ``d_vocab - 2`` most frequent GPT-2 tokens (ties broken by GPT-2 id). Our id 0 is BOS
  (shown as GPT-2's ``<|endoftext|>``), id 1 is UNK (any rarer token), ids 2.. are the kept GPT-2
  tokens, most frequent first. A small vocabulary keeps CPU training affordable: the unembedding
  dominates the cost. The tokenised corpus is cached under ``cache_dir()/datasets``.
- Sequences: documents are joined with BOS between them; a training sequence is a random
  ``n_ctx``-token window whose first token is replaced by BOS, so every sequence starts with BOS
  at position 0 (the position attention sinks form on).
- Repeated spans: a fraction ``TrainConfig.repeat_fraction`` of the sequences (default 0.25) get
  one span of their own text (``n_ctx/16`` to ``n_ctx/2`` tokens) copied to a later position, so
  induction heads can form within a CPU budget. Pages that use these models must say so.
- Random-token segments: a fraction ``TrainConfig.random_segment_fraction`` of the sequences
  (default 0) also get a segment of ``random_segment_lengths`` (inclusive range) uniformly random
  token ids (2 .. ``d_vocab - 1``) at a random position, copied once to a random later position,
  so the distance between the copies varies. Unlike a repeat of the row's own text, a random
  segment can only be predicted by copying: it is what makes induction heads form on a CPU
  budget (see the README's zoo section). Pages that use these models must say so.
- ``data="synthetic"`` swaps the corpus for a generated token stream (no tokeniser, no download),
  for fast tests.

Determinism and checkpoints
---------------------------
The model is initialised from ``torch.manual_seed(seed)``; the batch of step ``s`` is drawn from
``numpy.random.default_rng([seed, s])``, so it depends only on the seed and the step. With the
same torch build and thread count, a run is bitwise reproducible, and a run resumed from its
last checkpoint ends with bitwise the same weights and loss curve as an uninterrupted one.
Training uses ``TrainConfig.threads`` torch threads (default 1): float sums can depend on the
thread count, and these small models' many small operations gain little from a second thread
(and lose a lot when other processes compete for the cores); run two trainings at once
instead (``python -m sinklens.zoo --jobs 2``).

Precision: ``TrainConfig.precision`` is ``"bf16"`` (the forward pass under
``torch.autocast(dtype=torch.bfloat16)``; master weights, optimiser state, the residual streams
of the multi-stream schemes, their coefficients and Sinkhorn stay fp32) or ``"fp32"``; the default
``"auto"`` resolves, when the config is made, to bf16 where the hardware has bf16 matrix
instructions (AMX-BF16 / AVX512-BF16 on a CPU) and to fp32 elsewhere, with a one-line message.
The resolved precision is part of the config and so of the run id. Validation loss and all
analysis run in fp32. bf16 runs are as deterministic, and resume as bitwise, as fp32 ones.

``TrainConfig.compile = True`` trains through ``torch.compile(model)`` (one forward and one
backward graph; generated kernels fuse the elementwise work) with AdamW's fused kernel. Same
model, same maths, other floats, so it is part of the run id; compiled runs are as deterministic,
and resume as bitwise, as eager ones (tested). Compiling costs 6-140 s at the first step of a
process (less when torch's on-disk kernel cache already holds the graphs). Every
``log_every`` steps the multi-stream schemes' Amax gain is then read by a separate eager,
gradient-free forward pass on the same weights and batch, so no hook enters the compiled graph.

``TrainConfig.device = "cuda"`` trains on a GPU (the zoo's ``medium`` size), with TF32 matrix
products. The initial weights and the batches are the same as on the CPU; the float results are
not, and a GPU run is not guaranteed bitwise reproducible, so the device is part of the run id.
Checkpoints hold CPU tensors either way: a GPU run's checkpoints load on a machine without one.

A run directory holds ``run.json`` (its config), model snapshots ``step_000000.ckpt``... at
log-spaced steps (step 0 and many early ones, for emergence analyses), ``resume.ckpt`` (model,
optimiser, RNG state and history, rewritten every ``resume_every`` steps) and, when done,
``final.ckpt`` (and ``train.lock``, held while a process trains the run). Every file is written to a temporary name and renamed into place, and carries the
sha256 of its payload, checked on load: a corrupt or truncated file raises
:class:`CheckpointError`. A directory that belongs to a different config is never written into
(:class:`RunMismatchError`), so a finished checkpoint is never overwritten by another run's.

CLI: ``python -m sinklens.train --config NAME_OR_JSON [--seed S] [--out DIR]`` where NAME is a
zoo name such as ``tiny-mhc`` (see :mod:`sinklens.zoo`) and JSON is a file or a JSON string.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sinklens.cache import build_once, cache_dir, file_lock
from sinklens.hyperconnections import amax_gain
from sinklens.model import GPT, GPTConfig

BOS_ID = 0
UNK_ID = 1
GPT2_EOT_ID = 50256
DATASET_VERSION = 1  # bump when the tokenised-corpus format or recipe changes
CODE_VERSION = 1  # bump when a code change alters training results: it changes every run id
# bump when a change alters only CPU runs: it changes their run ids and leaves GPU runs' alone.
# 2: attention in training through sinklens.native's C kernel instead of torch's SDPA (same
# maths, other rounding). Version 1 had no such key.
CPU_CODE_VERSION = 2
# bump when a change alters only the multi-stream schemes' training (HC, mHC, mHC-lite): it changes
# their run ids and leaves the residual runs' alone. 2: the C kernels of sinklens.native (Sinkhorn
# and the stream read/write; same maths, different rounding, and the compiled Sinkhorn no longer
# always in log space).
STREAMS_CODE_VERSION = 2
# bump when a change alters only compiled runs (TrainConfig.compile): it changes their run ids and
# leaves eager runs' alone. 2: the GELU written with a sigmoid when compiled (sinklens.model.gelu_tanh).
# 3: the loss written with logsumexp when compiled (sinklens.model.next_token_loss).
COMPILED_CODE_VERSION = 3


# --- Precision -----------------------------------------------------------------------------------

PRECISIONS = ("bf16", "fp32")
_told_fallback = False


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AMX-BF16 or AVX512-BF16).

    Without them a bf16 autocast runs emulated and is slower than fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask oneDNN
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def default_precision(device: str = "cpu") -> str:
    """``"bf16"`` where ``device`` has fast bfloat16 matrix products, else ``"fp32"`` (said once)."""
    global _told_fallback
    if device.startswith("cuda"):
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = cpu_has_bf16_matmul()
    if not fast and not _told_fallback:
        print(f"[sinklens] no bfloat16 matrix instructions on this {device.split(':')[0].upper()}: training in fp32.",
              file=sys.stderr)
        _told_fallback = True
    return "bf16" if fast else "fp32"


def autocast(cfg: "TrainConfig"):
    """The forward pass's precision context: bf16 autocast (master weights stay fp32) or nothing."""
    if cfg.precision == "bf16":
        return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- Memory allocator ----------------------------------------------------------------------------

# glibc's mallopt parameters (malloc.h) and the values reuse_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit machines
_reused_freed_memory: bool | None = None


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to 32 MiB for reuse, for the rest of the process.

    With glibc's defaults a training step's activations (0.1-16 MiB blocks) keep going back to the
    kernel (blocks above the mmap threshold are unmapped when freed, and the top of the heap is
    trimmed), and the next step page-faults them in again, 4 KiB at a time: about 2,100 page
    faults per step of the residual ``small`` model, 12,800 of mHC, and 8-10% of the step time
    on a CPU (README, "Benchmarks"). With every block up to 32 MiB taken from the heap and the
    heap trimmed only past 2 GiB free, a step makes almost none. Only where memory comes from
    changes, not what is computed: results are bitwise the same (tested).

    Process-wide and for good (the process keeps its peak heap until it exits; glibc's automatic
    threshold adjustment is off), so only dedicated training processes call it: the
    ``python -m sinklens.train`` and ``python -m sinklens.zoo`` CLIs on CPU runs (the zoo runs
    every training as the former), and the training benchmark. A notebook or test process that calls :func:`train` itself keeps glibc's defaults.
    Returns whether the setting is in effect (False off Linux, or where the C library has no
    ``mallopt``, e.g. musl: nothing changes).
    """
    global _reused_freed_memory
    if _reused_freed_memory is None:
        _reused_freed_memory = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
            except (OSError, AttributeError, TypeError):
                pass
            else:
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                _reused_freed_memory = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _reused_freed_memory


# --- Config --------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that determines a training run (with ``seed``)."""

    model: GPTConfig = field(default_factory=GPTConfig)
    seed: int = 0
    data: str = "offline"  # "offline" (the corpus above) or "synthetic" (for tests)
    batch_size: int = 16
    n_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    repeat_fraction: float = 0.25
    random_segment_fraction: float = 0.0  # rows that also get a repeated segment of random ids
    random_segment_lengths: tuple[int, int] = (8, 31)  # inclusive range of that segment's length
    n_snapshots: int = 24  # model snapshots at log-spaced steps, step 0 and the last included
    resume_every: int = 100  # steps between resume checkpoints
    log_every: int = 10  # steps between Amax-gain measurements (multi-stream schemes)
    threads: int = 1  # torch intra-op threads; part of the config because results depend on it
    device: str = "cpu"  # "cpu" or "cuda": float results differ between them, so it is part of the run
    precision: str = "auto"  # "bf16" (autocast), "fp32", or "auto": bf16 where the hardware has it
    compile: bool = False  # torch.compile the model and use AdamW's fused kernel (other floats, same maths)
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GPTConfig.from_dict(self.model)
        if self.data not in ("offline", "synthetic"):
            raise ValueError(f"data must be 'offline' or 'synthetic', got {self.data!r}.")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise ValueError(f"repeat_fraction must be in [0, 1], got {self.repeat_fraction}.")
        if not 0.0 <= self.random_segment_fraction <= 1.0:
            raise ValueError(f"random_segment_fraction must be in [0, 1], got {self.random_segment_fraction}.")
        lo, hi = (int(v) for v in self.random_segment_lengths)
        self.random_segment_lengths = (lo, hi)
        if self.random_segment_fraction > 0 and (not 1 <= lo <= hi or 1 + 2 * hi > self.model.n_ctx):
            raise ValueError(
                f"random_segment_lengths {self.random_segment_lengths} must satisfy 1 <= lo <= hi and "
                f"1 + 2 * hi <= n_ctx = {self.model.n_ctx}."
            )
        if self.n_steps < 1 or self.batch_size < 1:
            raise ValueError("n_steps and batch_size must be >= 1.")
        if self.model.n_ctx < 8:
            raise ValueError("n_ctx must be at least 8.")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}.")
        if self.precision == "auto":
            self.precision = default_precision(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} or 'auto', got {self.precision!r}.")

    def text_only(self, **changes) -> "TrainConfig":
        """This config with no repeated spans or random segments (plain held-out text windows)."""
        return dataclasses.replace(self, repeat_fraction=0.0, random_segment_fraction=0.0, **changes)

    def data_mixture(self) -> str:
        """The training rows in words, for the pages that use these models."""
        parts = []
        if self.repeat_fraction:
            parts.append(f"{self.repeat_fraction:.0%} of the training sequences carry one span of their own text "
                         "repeated later in the sequence")
        if self.random_segment_fraction:
            lo, hi = self.random_segment_lengths
            parts.append(f"{self.random_segment_fraction:.0%} carry a segment of {lo}-{hi} uniformly random token ids "
                         "copied to a random later position (so the offset between the copies varies)")
        return ("; ".join(parts) + ". These repeats are there so that induction heads can form on a CPU budget."
                if parts else "Plain text windows, no repeats.")

    @property
    def tokens_per_step(self) -> int:
        """Training tokens per step: ``batch_size * n_ctx``."""
        return self.batch_size * self.model.n_ctx

    @property
    def n_tokens(self) -> int:
        """Training tokens of the whole run: ``n_steps * tokens_per_step``."""
        return self.n_steps * self.tokens_per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {sorted(unknown)}.")
        return cls(**d)

    def run_id(self) -> str:
        """A short hash of everything that determines the run (config and code/data versions),
        except its display name."""
        d = self.to_dict()
        d.pop("name")
        if d["device"] == "cpu":  # added after the first runs: CPU runs keep their ids
            d.pop("device")
        if not d["compile"]:  # likewise: eager runs keep their ids
            d.pop("compile")
        else:  # version 1 had no such key
            d["compiled_code_version"] = COMPILED_CODE_VERSION
        d["code_version"] = CODE_VERSION
        if self.model.residual != "residual":  # version 1 had no such key: ids from before it changed
            d["streams_code_version"] = STREAMS_CODE_VERSION
        if self.device == "cpu":  # the only device where sinklens.native's kernels run
            d["cpu_code_version"] = CPU_CODE_VERSION
            from sinklens import native

            if not native.available():  # the torch fallback rounds differently: its own runs
                d["native_kernels"] = False
        d["dataset_version"] = DATASET_VERSION
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warmup, then cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def snapshot_steps(n_steps: int, n_snapshots: int) -> list[int]:
    """Log-spaced steps in ``[0, n_steps]``: 0, 1, 2, ... denser early; always 0 and ``n_steps``."""
    steps = {0, n_steps}
    if n_snapshots > 2:
        steps |= {int(round(s)) for s in np.geomspace(1, n_steps, n_snapshots - 1)}
    return sorted(steps)


# --- Data ----------------------------------------------------------------------------------------


@dataclass
class TokenData:
    """A tokenised corpus in our small vocabulary: ``train``/``val`` int32 token streams."""

    train: np.ndarray
    val: np.ndarray
    gpt2_ids: list[int]  # our id -> GPT-2 id (BOS -> <|endoftext|>, UNK -> -1)
    description: str


class Vocab:
    """Our small vocabulary: text <-> ids through GPT-2 BPE (id 0 BOS, 1 UNK)."""

    def __init__(self, gpt2_ids: list[int]):
        self.gpt2_ids = list(gpt2_ids)
        self.from_gpt2 = {g: i for i, g in enumerate(self.gpt2_ids) if i >= 2}
        self._tok = None

    def _tokenizer(self):
        if self._tok is None:
            from sinklens.data import gpt2_tokenizer

            self._tok = gpt2_tokenizer()
        return self._tok

    def __len__(self) -> int:
        return len(self.gpt2_ids)

    def encode(self, text: str, prepend_bos: bool = True) -> list[int]:
        ids = [self.from_gpt2.get(g, UNK_ID) for g in self._tokenizer().encode(text)]
        return [BOS_ID] + ids if prepend_bos else ids

    def to_str_tokens(self, ids) -> list[str]:
        tok = self._tokenizer()
        out = []
        for i in [int(i) for i in ids]:
            if i == BOS_ID:
                out.append("<|endoftext|>")
            elif i == UNK_ID:
                out.append("<unk>")
            else:
                out.append(tok.decode([self.gpt2_ids[i]]))
        return out

    def decode(self, ids) -> str:
        return "".join(self.to_str_tokens(ids))


def _build_offline(folder: Path, d_vocab: int) -> None:
    from sinklens.data import gpt2_tokenizer, offline_documents

    tok = gpt2_tokenizer()
    docs = offline_documents()
    encoded = [np.asarray(tok.encode(text), dtype=np.int64) for _, text in docs]
    counts = Counter()
    for i, ids in enumerate(encoded):
        if i % 50 != 0:  # count on the training documents only
            counts.update(ids.tolist())
    counts.pop(GPT2_EOT_ID, None)
    kept = sorted(counts, key=lambda g: (-counts[g], g))[: d_vocab - 2]
    gpt2_ids = [GPT2_EOT_ID, -1] + kept
    lookup = np.full(GPT2_EOT_ID + 1, UNK_ID, dtype=np.int32)  # GPT-2 id -> our id
    lookup[kept] = np.arange(2, 2 + len(kept), dtype=np.int32)
    streams: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for i, ids in enumerate(encoded):
        split = "val" if i % 50 == 0 else "train"
        streams[split] += [np.array([BOS_ID], np.int32), lookup[ids]]
    for split, parts in streams.items():
        np.save(folder / f"{split}.npy", np.concatenate(parts))
    n_train = sum(len(p) for p in streams["train"])
    unk = float((np.concatenate(streams["train"]) == UNK_ID).mean())
    meta = {
        "gpt2_ids": gpt2_ids,
        "description": (
            f"Offline corpus (NOT the Pile): {len(docs)} documents (State of the Union addresses, "
            f"Python stdlib source), GPT-2 BPE restricted to the {d_vocab - 2} most frequent tokens "
            f"+ BOS + UNK; {n_train} training tokens, {unk:.2%} UNK."
        ),
    }
    (folder / "vocab.json").write_text(json.dumps(meta))


def _build_synthetic(folder: Path, d_vocab: int) -> None:
    """A generated stream with learnable structure: a noisy walk over token ids, plus BOS breaks."""
    rng = np.random.default_rng(12345)
    n = 200_000
    steps = rng.choice([-1, 1, 2, 3], size=n, p=[0.2, 0.4, 0.3, 0.1])
    ids = 2 + np.cumsum(steps) % (d_vocab - 2)
    ids[rng.random(n) < 0.01] = BOS_ID
    ids = ids.astype(np.int32)
    np.save(folder / "train.npy", ids[: n * 9 // 10])
    np.save(folder / "val.npy", ids[n * 9 // 10 :])
    meta = {"gpt2_ids": [GPT2_EOT_ID, -1] + list(range(d_vocab - 2)), "description": "synthetic walk"}
    (folder / "vocab.json").write_text(json.dumps(meta))


def load_data(source: str, d_vocab: int) -> TokenData:
    """The tokenised corpus for ``source`` ("offline" / "synthetic") and vocabulary size, cached."""
    build = _build_offline if source == "offline" else _build_synthetic
    folder = build_once(
        cache_dir() / "datasets" / f"{source}-v{DATASET_VERSION}-vocab{d_vocab}",
        lambda tmp: build(tmp, d_vocab),
    )
    meta = json.loads((folder / "vocab.json").read_text())
    return TokenData(
        train=np.load(folder / "train.npy"),
        val=np.load(folder / "val.npy"),
        gpt2_ids=meta["gpt2_ids"],
        description=meta["description"],
    )


def get_batch(cfg: TrainConfig, stream: np.ndarray, step: int, split_salt: int = 0) -> torch.Tensor:
    """The ``[batch_size, n_ctx]`` token batch of ``step``: a function of (seed, step) only."""
    n_ctx = cfg.model.n_ctx
    rng = np.random.default_rng([cfg.seed, step, split_salt])
    starts = rng.integers(0, len(stream) - n_ctx, size=cfg.batch_size)
    batch = np.stack([stream[s : s + n_ctx] for s in starts]).astype(np.int64)
    batch[:, 0] = BOS_ID
    repeat = rng.random(cfg.batch_size) < cfg.repeat_fraction
    for row in np.flatnonzero(repeat):
        length = int(rng.integers(max(2, n_ctx // 16), (n_ctx - 1) // 2 + 1))
        src = int(rng.integers(1, n_ctx - 2 * length + 1))
        dst = int(rng.integers(src + length, n_ctx - length + 1))
        batch[row, dst : dst + length] = batch[row, src : src + length]
    if cfg.random_segment_fraction > 0:
        lo, hi = cfg.random_segment_lengths
        segment_rows = np.flatnonzero(rng.random(cfg.batch_size) < cfg.random_segment_fraction)
        for row in segment_rows:
            length = int(rng.integers(lo, hi + 1))
            src = int(rng.integers(1, n_ctx - 2 * length + 1))
            dst = int(rng.integers(src + length, n_ctx - length + 1))
            segment = rng.integers(2, cfg.model.d_vocab, size=length)
            batch[row, src : src + length] = segment
            batch[row, dst : dst + length] = segment
    return torch.from_numpy(batch)


# --- Checkpoint files ----------------------------------------------------------------------------

MAGIC = b"SINKLENS-CHECKPOINT-v1\n"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a sinklens checkpoint."""


class RunMismatchError(RuntimeError):
    """A run directory already belongs to a different training config."""


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically with its sha256."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    _atomic_write(Path(path), MAGIC + digest + b"\n" + body)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its sha256."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint at {path}.") from None
    header = len(MAGIC) + 65
    if not raw.startswith(MAGIC) or len(raw) < header:
        raise CheckpointError(f"{path} is not a sinklens checkpoint (or is truncated to {len(raw)} bytes).")
    digest, body = raw[len(MAGIC) : header - 1].decode("ascii", "replace"), raw[header:]
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(
            f"{path} is corrupt or truncated: its sha256 does not match the one stored in it. "
            "Delete it to retrain (sinklens never loads a damaged checkpoint)."
        )
    return torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")


def model_from_checkpoint(payload: dict) -> GPT:
    """The model stored in a checkpoint payload, in eval mode, with ``model.vocab`` attached."""
    model = GPT(GPTConfig.from_dict(payload["config"]["model"]))
    model.load_state_dict(payload["model"])
    model.eval()
    model.vocab = Vocab(payload["gpt2_ids"])
    return model


# --- Training ------------------------------------------------------------------------------------


def _claim_run_dir(out: Path, cfg: TrainConfig) -> None:
    """Write ``run.json``, or check the directory already belongs to this exact config."""
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / "run.json"
    mine = {"run_id": cfg.run_id(), "config": cfg.to_dict()}
    if run_json.exists():
        theirs = json.loads(run_json.read_text())
        if theirs.get("run_id") != mine["run_id"]:
            raise RunMismatchError(
                f"{out} holds run {theirs.get('run_id')} ({theirs.get('config', {}).get('name')}), "
                f"not {mine['run_id']} ({cfg.name}). Use another --out directory."
            )
        return
    _atomic_write(run_json, json.dumps(mine, indent=1).encode())


def _amax_hook(store: list):
    def hook(h_res: torch.Tensor, hook) -> None:
        store.append(h_res.detach())

    return hook


@torch.no_grad()
def evaluate(model: GPT, cfg: TrainConfig, stream: np.ndarray, n_batches: int = 4) -> float:
    """Mean next-token loss (fp32) on ``n_batches`` fixed batches of ``stream`` (no repeats of any kind)."""
    plain = cfg.text_only()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [model(get_batch(plain, stream, i, split_salt=1).to(device), return_type="loss").item()
              for i in range(n_batches)]
    model.train(was_training)
    return float(np.mean(losses))


def _check_can_compile(device: torch.device) -> None:
    """torch.compile on a CPU writes C++ kernels: say so clearly when no C++ compiler is found."""
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # inductor raises its own error types when the search fails
        raise RuntimeError(
            "This run is configured with compile=True (torch.compile), which on a CPU needs a C++ "
            f"compiler, and none was found ({type(err).__name__}: {err}). Install one (e.g. Debian's "
            "g++) or set TrainConfig.compile=False: an eager run of the same model, with its own run id."
        ) from err


def train(cfg: TrainConfig, out: Path | str, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train (or resume, or find finished) the run ``cfg`` in ``out``; return ``out/final.ckpt``.

    ``stop_after``: stop (with a resume checkpoint) once this many steps are done; for tests.
    """
    out = Path(out)
    threads, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    try:
        # one process at a time per run directory: a second one waits, then finds the result
        # (the kernel drops the lock of a process that dies)
        with file_lock(out / "train.lock"), torch.enable_grad():  # callers may be in no_grad()
            return _train(cfg, out, progress, stop_after)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _train(cfg: TrainConfig, out: Path, progress: bool, stop_after: int | None) -> Path:
    _claim_run_dir(out, cfg)
    final_path, resume_path = out / "final.ckpt", out / "resume.ckpt"
    if final_path.exists():
        done = load_checkpoint(final_path)
        if done["run_id"] != cfg.run_id():
            raise RunMismatchError(f"{final_path} belongs to run {done['run_id']}, not {cfg.run_id()}.")
        return final_path  # a finished GPU run loads on any machine
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"{cfg.name} seed {cfg.seed} is configured to train on a CUDA GPU (device={cfg.device!r}), and "
            f"this machine has none. Train it on a GPU machine and copy its run directory ({out.name}) "
            "into this cache's zoo/ folder, or use a CPU size (tiny, small)."
        )

    device = torch.device(cfg.device)
    data = load_data(cfg.data, cfg.model.d_vocab)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)  # initialised on the CPU: the same initial weights on every device
    model.to(device)
    if device.type == "cuda":  # TF32 matrix products on the GPU (restored by train())
        torch.backends.cuda.matmul.allow_tf32 = True
    model.train()
    # weight decay on Linear / Embedding matrices only, never on the connection weights
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=True if cfg.compile else None,
    )
    # compiled: one graph for the forward pass and one for the backward, every step, no hooks in
    # either (the Amax gain is then measured by a separate eager pass, below)
    if cfg.compile:
        _check_can_compile(device)
        # a clean compile cache, so that the n-th training in a process compiles as the first one
        # does (and never meets dynamo's recompile limit, past which it would silently run eager)
        torch._dynamo.reset()
    forward = torch.compile(model) if cfg.compile else model
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "amax_step": [], "amax_forward": [], "amax_backward": []}
    step = 0
    if resume_path.exists():
        state = load_checkpoint(resume_path)
        if state["run_id"] != cfg.run_id():
            raise RunMismatchError(f"{resume_path} belongs to run {state['run_id']}, not {cfg.run_id()}.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history, step = state["history"], state["step"]

    def payload(with_training_state: bool) -> dict:
        p = {
            "run_id": cfg.run_id(),
            "config": cfg.to_dict(),
            "step": step,
            "tokens_seen": step * cfg.tokens_per_step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "gpt2_ids": data.gpt2_ids,
        }
        if with_training_state:
            p.update(optimizer=opt.state_dict(), torch_rng=torch.get_rng_state(), history=history)
        return p

    snapshots = set(snapshot_steps(cfg.n_steps, cfg.n_snapshots))
    if step == 0 and not (out / "step_000000.ckpt").exists():
        save_checkpoint(out / "step_000000.ckpt", payload(False))

    multi_stream = cfg.model.residual != "residual"
    h_res_store: list[torch.Tensor] = []
    bar = tqdm(total=cfg.n_steps, initial=step, desc=f"{cfg.name} seed {cfg.seed}", disable=not progress, unit="step")
    t_last, step_last = time.perf_counter(), step
    while step < cfg.n_steps:
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = get_batch(cfg, data.train, step).to(device)
        measure = multi_stream and (step % cfg.log_every == 0 or step == cfg.n_steps - 1)
        hooks = [(lambda name: name.endswith("hook_h_res"), _amax_hook(h_res_store))] if measure else []
        if cfg.compile and measure:  # the same weights and batch, eager and without gradients
            with torch.no_grad(), model.hooks(fwd_hooks=hooks), autocast(cfg):
                model(batch, return_type="loss")
            hooks = []
        with model.hooks(fwd_hooks=hooks), autocast(cfg):
            loss = forward(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if measure:
            fwd, bwd = amax_gain(h_res_store)
            history["amax_step"].append(step)
            history["amax_forward"].append(fwd.max().item())
            history["amax_backward"].append(bwd.max().item())
            h_res_store.clear()
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        step += 1
        if step in snapshots and not (out / f"step_{step:06d}.ckpt").exists():
            save_checkpoint(out / f"step_{step:06d}.ckpt", payload(False))
        if step % cfg.resume_every == 0 or step in snapshots:
            save_checkpoint(resume_path, payload(True))
        if progress and (step % 10 == 0 or step == cfg.n_steps):
            now = time.perf_counter()
            postfix = {"loss": f"{loss.item():.3f}", "tok/s": f"{cfg.tokens_per_step * (step - step_last) / (now - t_last):.0f}"}
            if multi_stream and history["amax_forward"]:
                postfix["amax"] = f"{history['amax_forward'][-1]:.2f}"
            bar.set_postfix(postfix)
            t_last, step_last = now, step
        bar.update(1)
        if stop_after is not None and step >= stop_after and step < cfg.n_steps:
            save_checkpoint(resume_path, payload(True))
            bar.close()
            return resume_path
    bar.close()
    final = payload(True)
    final["val_loss"] = evaluate(model, cfg, data.val)
    save_checkpoint(final_path, final)
    resume_path.unlink(missing_ok=True)
    return final_path


def train_config_from_arg(arg: str) -> TrainConfig:
    """A zoo name (``tiny-mhc``), a path to a JSON file, or a JSON string -> :class:`TrainConfig`."""
    if arg.lstrip().startswith("{"):
        return TrainConfig.from_dict(json.loads(arg))
    if Path(arg).is_file():
        return TrainConfig.from_dict(json.loads(Path(arg).read_text()))
    from sinklens import zoo

    return zoo.config_by_name(arg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinklens.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="zoo name (e.g. tiny-mhc), JSON file, or JSON string")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--out", default=None, help="run directory (default: under the cache)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = train_config_from_arg(args.config)
    if cfg.device == "cpu":
        reuse_freed_memory()  # a process that only trains: keep freed blocks (see there)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    out = Path(args.out) if args.out else cache_dir() / "runs" / f"{cfg.name}-seed{cfg.seed}-{cfg.run_id()}"
    final = train(cfg, out, progress=not args.no_progress)
    state = load_checkpoint(final)
    print(f"done: {final} (step {state['step']}, final loss {state['history']['loss'][-1]:.4f}, val loss {state['val_loss']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
