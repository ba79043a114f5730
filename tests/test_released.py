"""The released-models path (sinklens.released), offline: its failure message, and its hooks on a
stand-in with the released models' module layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sinklens import protocol, released


def test_offline_load_fails_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(released.ReleasedModelsUnavailable, match="released_models=False"):
        released.load("mhc")
    with pytest.raises(ValueError, match="scheme"):
        released.load("hyper")


class _Attn(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head, self.c_attn, self.c_proj = n_head, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.n_head, -1).transpose(1, 2) for y in self.c_attn(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        self.last_v = v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.branch_attn = nn.ModuleList([nn.Identity(), _Attn(d, n_head)])

    def forward(self, x):
        return x + self.branch_attn[1](x)


class _Net(nn.Module):
    """The released models' module layout, as mhc-interp reads it (transformer.h[i].branch_attn[1])."""

    def __init__(self, cfg):
        super().__init__()
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                                          "h": nn.ModuleList(_Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))})

    def forward(self, ids, targets=None):
        x = self.transformer.wte(ids)
        for block in self.transformer.h:
            x = block(x)
        return x @ self.transformer.wte.weight.T, None


class _Cfg:
    n_layer, n_head, n_embd, vocab_size = 2, 4, 32, 60


def test_patterns_and_ablation_on_a_stand_in():
    torch.manual_seed(0)
    cfg = _Cfg()
    net = _Net(cfg).eval()
    ids = torch.randint(0, 60, (2, 11))
    pats = released.patterns(net, cfg, ids)
    assert pats.shape == (2, 2, 4, 11, 11)
    torch.testing.assert_close(pats.sum(-1), torch.ones(2, 2, 4, 11))
    assert float(pats.triu(1).abs().max()) == 0.0
    # the rebuilt pattern reproduces the fused attention's output
    attn = net.transformer.h[0].branch_attn[1]
    x = net.transformer.wte(ids)
    out = attn(x)
    z = (pats[0] @ attn.last_v).transpose(1, 2).reshape(2, 11, 32)
    torch.testing.assert_close(attn.c_proj(z), out, atol=1e-5, rtol=1e-4)
    # ablation: a head that writes nothing has no effect; the others do
    with torch.no_grad():
        net.transformer.h[1].branch_attn[1].c_proj.weight[:, 8:16] = 0
    eff = released.ablation_effects(net, cfg, ids)
    assert eff.shape == (2, 4) and eff[1, 1] == pytest.approx(0.0, abs=1e-6) and np.abs(eff).max() > 1e-4
    prompts = protocol.source_prompts(lambda t: [3 + i for i in range(len(t.split()))], 60 * 30, 0)
    small = protocol.SourcePrompts(prompts.sentence % 60, prompts.repeat % 60, prompts.n_repeat)
    m = released.measure(net, cfg, small)
    assert m.pattern["induction"].shape == (2, 4) and np.isnan(m.direct).all()
