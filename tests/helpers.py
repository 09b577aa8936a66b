"""Small models and plain reference implementations shared by the tests."""

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import bioxlstm
from bioxlstm.models import kernels

DATA = Path(__file__).resolve().parent.parent / "data"


# The causal architectures every execution-path test runs on (prefill and stepwise decoding, generate,
# padding, inference in segments, packing): a new variant is one entry here.
CAUSAL_VARIANTS = {
    "mlstm-only": {"slstm_layers": ()},
    "mixed": {"slstm_layers": (1,)},
    "rotary-mixed": {"slstm_layers": (1,), "position_embedding": "rotary"},
}


def tiny_model(
    slstm_layers=(1,), chunk_size=16, vocab_size=12, perturb=0.1, model_class=bioxlstm.BioXLSTMForCausalLM, **overrides
) -> bioxlstm.models.BioXLSTMPreTrainedModel:
    """A small model (causal unless `model_class` says otherwise) whose weights are moved away from the
    initialisation, so that zero-initialised parts (recurrent matrices, norm offsets) take part in every
    comparison."""
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=3,
        num_heads=2,
        slstm_layers=list(slstm_layers),
        chunk_size=chunk_size,
        **{"kernel": "native", "pad_token_id": 0, **overrides},
    )
    return perturbed(model_class(config), perturb)


def perturbed(model: torch.nn.Module, perturb: float) -> torch.nn.Module:
    """`model` in eval mode with Gaussian noise of std `perturb` added to every weight."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model.eval()


def mlstm_reference(q, k, v, igate, fgate, eps=1e-6):
    """The mLSTM recurrence of docs/recurrences.md, one time step after the other, in float64.

    q, k, v: (B, NH, S, DH); igate, fgate: (B, NH, S). Returns h (B, NH, S, DH).
    """
    q, k, v, igate, fgate = (t.double() for t in (q, k, v, igate, fgate))
    batch, heads, seq_len, dim = q.shape
    c = q.new_zeros(batch, heads, dim, dim)
    n = q.new_zeros(batch, heads, dim)
    m = q.new_zeros(batch, heads, 1)
    outputs = []
    for t in range(seq_len):
        log_f = F.logsigmoid(fgate[..., t, None])
        m_new = torch.maximum(log_f + m, igate[..., t, None])
        f_act = torch.exp(log_f + m - m_new)
        i_act = torch.exp(igate[..., t, None] - m_new)
        k_t = k[:, :, t] / math.sqrt(dim)
        c = f_act[..., None] * c + i_act[..., None] * k_t[..., :, None] * v[:, :, t, None, :]
        n = f_act * n + i_act * k_t
        m = m_new
        q_t = q[:, :, t]
        numerator = torch.einsum("bhd,bhde->bhe", q_t, c)
        denominator = torch.maximum((q_t * n).sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
        outputs.append(numerator / denominator)
    return torch.stack(outputs, dim=2)


def count_scans(monkeypatch) -> list[torch.Size]:
    """The shape of the gate inputs, (B, S, 4, NH, DH), of every `kernels.slstm_scan` call from now on."""
    shapes, scan = [], kernels.slstm_scan
    monkeypatch.setattr(kernels, "slstm_scan", lambda preacts, *args, **kwargs: shapes.append(preacts.shape) or scan(preacts, *args, **kwargs))
    return shapes


@functools.lru_cache(maxsize=1)
def ecoli_genome() -> str:
    """The bundled E. coli 536 genome (read once per test session)."""
    from bioxlstm.io import read_records

    return next(iter(read_records(DATA / "ecoli_536_NC_008253.fna.gz", domain="dna"))).sequence.upper()


def dna_model(head=None, slstm_layers=(), perturb=0.1, **overrides):
    """A small DNA model (masked LM unless `head` is given) with weights moved off the initialisation."""
    tokenizer = bioxlstm.load_tokenizer("dna")
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=3,
        num_heads=2,
        chunk_size=16,
        pad_token_id=tokenizer.pad_token_id,
        complement_map=bioxlstm.complement_map(tokenizer),
        kernel="native",
    )
    config = bioxlstm.BioXLSTMConfig(slstm_layers=list(slstm_layers), **{**settings, **overrides})
    return perturbed((head or bioxlstm.BioXLSTMForMaskedLM)(config), perturb)
