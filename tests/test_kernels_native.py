"""Our own chunkwise mLSTM (what an exported model runs on plain `transformers`, and every model for
CPU inference) against plain references and `mlstm_kernels`; bf16 models on the CPU."""

import pytest
import torch
from helpers import dna_model, mlstm_reference, tiny_model

import bioxlstm
from bioxlstm.models import kernels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTHS = [2, 5, 16, 37, 100]  # shorter than a chunk, one chunk, and not multiples of the chunk (16)


def mlstm_inputs(seq_len: int, batch: int = 2, heads: int = 3, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq_len, dim, generator=generator) for _ in range(3))
    igate = torch.randn(batch, heads, seq_len, generator=generator)
    fgate = torch.randn(batch, heads, seq_len, generator=generator) + 2
    return [q, k, v, igate, fgate]


def random_state(batch: int = 2, heads: int = 3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, heads, dim, dim, generator=generator),
        torch.randn(batch, heads, dim, generator=generator),
        torch.rand(batch, heads, 1, generator=generator) * 4 - 2,
    )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference relative to the largest value: fp32 rounding gives about 1e-6 here (measured
    1.2e-6 on outputs up to ~30); a wrong gate, scale or stabiliser gives order 1. Bound: 1e-5."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def stepwise(q, k, v, igate, fgate, state):
    """The recurrence one token after the other in float64, from any state (the step kernel, whose
    fp32 outputs test_model checks against `mlstm_reference`)."""
    outputs = []
    state = tuple(t.double() for t in state)
    for t in range(q.shape[2]):
        h, state = kernels.mlstm_step_native(
            *(x[:, :, t].double() for x in (q, k, v)), igate[..., t, None].double(), fgate[..., t, None].double(),
            *state, dtype_state=torch.float64,
        )  # fmt: skip
        outputs.append(h)
    return torch.stack(outputs, dim=2), state


def native(q, k, v, igate, fgate, state, chunk=16):
    """Ours alone, through the padding of `mlstm_recurrence` (lengths need not be a multiple of the chunk)."""
    length = -(-q.shape[2] // chunk) * chunk if q.shape[2] >= chunk else q.shape[2]
    h, state = kernels.mlstm_chunkwise_native(
        *kernels.padded_with_no_ops(length, q, k, v, igate, fgate), state, min(chunk, length)
    )
    return h[:, :, : q.shape[2]], state


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_native_chunkwise_follows_the_stepwise_recurrence(seq_len):
    """From a fresh state the outputs are the recurrence of docs/recurrences.md (`mlstm_reference`); from any given
    state, outputs and final state are those of stepping token by token in float64."""
    inputs = mlstm_inputs(seq_len)
    h, _ = native(*inputs, kernels.fresh_mlstm_state(inputs[0], inputs[2]))
    assert relative_error(h, mlstm_reference(*inputs)) < 1e-5

    h, state = native(*inputs, random_state())
    expected_h, expected_state = stepwise(*inputs, random_state())
    assert relative_error(h, expected_h) < 1e-5
    for got, expected in zip(state, expected_state):
        assert got.dtype == torch.float32 and relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "initial state"])
def test_native_chunkwise_equals_the_library_chunkwise(seq_len, with_state):
    library = pytest.importorskip("mlstm_kernels.torch").get_mlstm_kernel("chunkwise--native_autograd")
    inputs = mlstm_inputs(seq_len)
    state = random_state() if with_state else kernels.fresh_mlstm_state(inputs[0], inputs[2])
    h, final = native(*inputs, state)
    chunk = 16 if seq_len >= 16 else seq_len
    q, k, v, igate, fgate = kernels.padded_with_no_ops(-(-seq_len // chunk) * chunk, *inputs)
    their_h, their_final = library(
        q, k, v, igate, fgate, *state, return_last_states=True, chunk_size=chunk, eps=kernels.MLSTM_EPS
    )
    assert relative_error(h, their_h[:, :, :seq_len]) < 1e-5
    for ours, theirs in zip(final, their_final):
        assert relative_error(ours, theirs) < 1e-5


def test_no_op_padding_is_invisible():
    """Chunks of positions with a closed input and an open forget gate leave the real positions'
    outputs and the state exactly unchanged (the fp32 gates make those positions add exactly 0 and
    scale by exactly 1). Padding within a chunk is checked against the recurrence above (37, 100)."""
    inputs = mlstm_inputs(37)
    h, state = kernels.mlstm_chunkwise_native(*kernels.padded_with_no_ops(48, *inputs), random_state(), 16)
    padded_further = kernels.padded_with_no_ops(96, *inputs)
    h_longer, state_longer = kernels.mlstm_chunkwise_native(*padded_further, random_state(), 16)
    assert torch.equal(h_longer[:, :, :48], h)
    for longer, shorter in zip(state_longer, state):
        assert torch.equal(longer, shorter)


def gradients(function, inputs, state) -> list[torch.Tensor]:
    leaves = [t.clone().requires_grad_() for t in (*inputs, *state)]
    h, final = function(*leaves[:5], tuple(leaves[5:]))
    weights = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)
    ((h * weights).sum() + sum(t.sum() for t in final)).backward()
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("seq_len", [5, 37])
def test_native_chunkwise_gradients_match_the_recurrence(seq_len):
    """Ours trains where `mlstm_kernels` is absent (and in bf16): its gradients, initial state
    included, are those of the float64 step-by-step recurrence."""
    inputs, state = mlstm_inputs(seq_len), random_state()
    ours = gradients(native, inputs, state)
    expected = gradients(stepwise, [t.double() for t in inputs], [t.double() for t in state])
    for name, got, want in zip(("q", "k", "v", "i", "f", "C", "n", "m"), ours, expected):
        assert (got.double() - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item()), name


def test_which_kernel_runs():
    """A CPU always runs ours, in inference and training alike, so outputs and gradients do not depend
    on whether the library is installed (its custom backward holds the normaliser constant:
    docs/mlstm_triton_backward.md)."""
    with torch.no_grad():
        assert kernels._library_chunkwise("native") is None
    assert kernels._library_chunkwise("native", needs_grad=True) is None


def test_a_model_trains_and_generates_without_mlstm_kernels(monkeypatch):
    """With the library unimportable (as in an export on plain transformers) training and decoding
    run, with the loss and gradients they have where it is installed."""
    model = tiny_model().train()
    ids = torch.randint(1, 12, (2, 40))
    reference_loss = model(ids, labels=ids).loss
    reference_grads = torch.autograd.grad(reference_loss, list(model.parameters()))
    monkeypatch.setattr(kernels, "_mlstm_kernels", lambda: None)
    loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.allclose(loss, reference_loss, atol=1e-5)
    for got, expected in zip(grads, reference_grads):
        assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
    assert model.eval().generate(ids[:, :5], max_new_tokens=4, do_sample=False).shape == (2, 9)


BF16_MODELS = {
    "causal": lambda: tiny_model(vocab_size=12),
    "masked bidirectional": lambda: dna_model(slstm_layers=(1,), bidirectional=True),
    "masked reverse-complement": lambda: dna_model(slstm_layers=(1,), rcps=True, bidirectional=True),
}


def log_probs(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), dim=-1)


@pytest.mark.parametrize("kind", BF16_MODELS)
def test_bf16_on_cpu_is_close_to_fp32(kind):
    """A bf16 model runs on the CPU (recurrent states stay fp32) with log-probs close to fp32's.

    The yardstick is the error that rounding the weights to bf16 alone causes (computing in fp32):
    bf16 arithmetic rounds every activation with the same relative error (2^-9), so the whole bf16
    model lands at about twice that (measured 1.6-2.3x on these models, mean |d log p| ~0.015); a
    state or a kernel sum kept in bf16 over 300 tokens would exceed 3x."""
    torch.manual_seed(0)
    model = BF16_MODELS[kind]()
    ids = torch.randint(4, model.config.vocab_size, (2, 300))
    exact = log_probs(model, ids)
    bf16 = log_probs(model.to(torch.bfloat16), ids)
    rounded_weights = log_probs(model.float(), ids)
    error, yardstick = (bf16 - exact).abs().mean(), (rounded_weights - exact).abs().mean()
    assert error < 3 * yardstick, (error, yardstick)
    assert (bf16.argmax(-1) == exact.argmax(-1)).float().mean() > 0.95


def test_bf16_loaded_causal_model_generates(tmp_path):
    """`from_pretrained(dtype=torch.bfloat16)` gives a model whose prefill and decoding run on the
    CPU, the recurrent states of its cache (mLSTM and sLSTM) in fp32."""
    tiny_model(vocab_size=12).save_pretrained(tmp_path)
    model = bioxlstm.BioXLSTMForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.randint(1, 12, (2, 40))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    c, n, m, _ = cache.states[0]  # block 0 is an mLSTM block
    assert c.dtype == n.dtype == m.dtype == torch.float32
    assert cache.states[1][0].dtype == torch.float32  # block 1 is an sLSTM block: (h, c, n, m) stacked
    assert model.generate(ids, max_new_tokens=6, do_sample=False).shape == (2, 46)
    sampled = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=5)
    assert sampled.shape == (2, 46) and sampled.max() < 12
