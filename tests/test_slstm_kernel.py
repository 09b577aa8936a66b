"""The sLSTM scan (`kernels.slstm_scan`, a custom autograd function) against the plain loop it
replaced: the same outputs, final state and gradients, on every input the model gives it."""

import pytest
import torch
import torch.nn.functional as F
from helpers import count_scans, tiny_model

from bioxlstm.models import kernels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS, HEAD_DIM = 2, 4


def slstm_scan_reference(preacts, recurrent_kernel, bias, state, keep, reset=None, overwrite_preacts=False):
    """The sLSTM recurrence one step after another, autograd through every operation: the scan as
    it was before the hand-written backward (same arguments and results as `kernels.slstm_scan`; it
    never writes its inputs, whatever `overwrite_preacts` allows)."""
    batch, seq_len, _, heads, head_dim = preacts.shape
    out_dtype = preacts.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    preacts, recurrent_kernel, bias = (t.to(compute_dtype) for t in (preacts, recurrent_kernel, bias))
    state = preacts.new_zeros(batch, 4, heads, head_dim) if state is None else state.to(compute_dtype)
    h, c, n, m = state.unbind(1)
    kernel = recurrent_kernel.reshape(heads, head_dim, 4 * head_dim)
    bias = bias.transpose(0, 1)  # (4, NH, DH)
    outputs = []
    for t in range(seq_len):
        if reset is not None:
            fresh = ~reset[:, t, None, None]
            h, c, n, m = (v * fresh for v in (h, c, n, m))
        recurrent = torch.bmm(h.transpose(0, 1), kernel)  # (NH, B, 4*DH)
        recurrent = recurrent.view(heads, batch, 4, head_dim).permute(1, 2, 0, 3)
        i_raw, f_raw, z_raw, o_raw = (preacts[:, t] + recurrent + bias).unbind(1)
        log_f_plus_m = m + F.logsigmoid(f_raw)
        m_new = torch.where(n == 0, i_raw, torch.maximum(i_raw, log_f_plus_m))
        i_act = torch.exp(i_raw - m_new).clamp(max=1.0)
        f_act = torch.exp(log_f_plus_m - m_new).clamp(max=1.0)
        c_new = f_act * c + i_act * torch.tanh(z_raw)
        n_new = f_act * n + i_act
        h_new = torch.sigmoid(o_raw) * c_new / n_new
        if keep is not None:
            keep_t = keep[:, t, None, None]
            h_new, c_new, n_new, m_new = (
                torch.where(keep_t, new, old) for new, old in ((h_new, h), (c_new, c), (n_new, n), (m_new, m))
            )
        h, c, n, m = h_new, c_new, n_new, m_new
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(out_dtype), torch.stack((h, c, n, m), dim=1)


def scan_inputs(batch=3, seq_len=11, dtype=torch.float32, state=False):
    """Random sLSTM inputs of a size where every gate is sometimes open and sometimes shut."""
    preacts = torch.randn(batch, seq_len, 4, HEADS, HEAD_DIM, dtype=dtype) * 2
    kernel = torch.randn(HEADS, HEAD_DIM, 4, HEAD_DIM, dtype=dtype) * 0.5
    bias = torch.randn(HEADS, 4, HEAD_DIM, dtype=dtype)
    initial = None
    if state:  # a state some steps into a sequence: n >= 1, m anywhere
        initial = torch.randn(batch, 4, HEADS, HEAD_DIM, dtype=dtype)
        initial[:, 2] = initial[:, 2].abs() + 1
    return preacts, kernel, bias, initial


def padding(batch=3, seq_len=11):
    """keep: row 0 whole, row 1 padded on the right, row 2 on the left."""
    keep = torch.ones(batch, seq_len, dtype=torch.bool)
    keep[1, 7:] = False
    keep[2, :4] = False
    return keep


def packing(batch=3, seq_len=11):
    """reset: sequences packed into rows, starting at position 0 and where marked."""
    reset = torch.zeros(batch, seq_len, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, 5] = reset[1, 3] = reset[1, 4] = reset[2, 10] = True
    return reset


CASES = {
    "plain": dict(),
    "padded": dict(keep=True),
    "packed": dict(reset=True),
    "padded and packed": dict(keep=True, reset=True),
    "given state": dict(state=True),
    "given state, padded and packed": dict(state=True, keep=True, reset=True),
}


def case_inputs(case, dtype=torch.float32):
    options = CASES[case]
    preacts, kernel, bias, initial = scan_inputs(dtype=dtype, state=options.get("state", False))
    keep = padding() if options.get("keep") else None
    reset = packing() if options.get("reset") else None
    return preacts, kernel, bias, initial, keep, reset


def max_difference(got, expected):
    """The largest difference of any tensor pair, relative to that tensor's largest value where it
    exceeds 1. The outputs lie in (-1, 1) and are held to it absolutely; the state's sums c and n and
    the gradients (sums over steps) grow beyond 1, where fp32 resolves 1e-6 only relatively: the plain
    loop's own fp32 rounding, against itself in float64, is about as large."""
    return max(
        (a.double() - b.double()).abs().max().item() / max(1.0, b.double().abs().max().item())
        for a, b in zip(got, expected)
    )


# float64 shows that the two compute the same function; float32 what a model sees.
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = pytest.mark.parametrize("dtype", TOLERANCE, ids=["fp32", "fp64"])


@DTYPES
@pytest.mark.parametrize("case", CASES)
def test_scan_computes_what_the_plain_loop_computes(case, dtype):
    """Outputs and final state within 1e-6 of the plain loop (1e-12 in float64), for padded (left
    and right), packed and continued inputs, with and without gradients."""
    inputs = case_inputs(case, dtype)
    expected = slstm_scan_reference(*inputs)
    with torch.no_grad():
        assert max_difference(kernels.slstm_scan(*inputs), expected) <= TOLERANCE[dtype]
    preacts = inputs[0].clone().requires_grad_()
    assert max_difference(kernels.slstm_scan(preacts, *inputs[1:]), expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("case", CASES)
def test_scan_writes_its_inputs_only_when_the_caller_lets_it(case):
    """`overwrite_preacts` (the layer's gate inputs, which it discards) gives the same results as the
    default, which leaves the inputs as they were."""
    inputs = case_inputs(case)
    untouched = inputs[0].clone()
    with torch.no_grad():
        kept = kernels.slstm_scan(*inputs)
        assert torch.equal(inputs[0], untouched)
        overwritten = kernels.slstm_scan(*inputs, overwrite_preacts=True)
    assert max_difference(overwritten, kept) == 0.0


@DTYPES
@pytest.mark.parametrize("case", CASES)
def test_gradients_are_those_of_autograd_through_the_plain_loop(case, dtype):
    """Gradients of the gate inputs, the recurrent matrices, the bias and the initial state, from
    a loss on the outputs and on the final state, within 1e-6 of autograd through the plain loop
    (1e-12 in float64)."""
    preacts, kernel, bias, initial, keep, reset = case_inputs(case, dtype)
    if initial is None:
        initial = torch.zeros(3, 4, HEADS, HEAD_DIM, dtype=dtype)
    weights = torch.randn(3, 11, HEADS, HEAD_DIM, dtype=dtype), torch.randn(3, 4, HEADS, HEAD_DIM, dtype=dtype)

    def gradients(scan):
        leaves = [t.clone().requires_grad_() for t in (preacts, kernel, bias, initial)]
        h, final = scan(*leaves, keep, reset)
        ((h * weights[0]).sum() + (final * weights[1]).sum()).backward()
        return [leaf.grad for leaf in leaves]

    assert max_difference(gradients(kernels.slstm_scan), gradients(slstm_scan_reference)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("case", ["padded and packed", "given state, padded and packed"])
def test_gradients_pass_a_numerical_check_in_float64(case):
    """torch.autograd.gradcheck: the hand-written backward is the derivative of the forward."""
    preacts, kernel, bias, initial, keep, reset = case_inputs(case, torch.float64)
    preacts, keep, reset = preacts[:, :8], keep[:, :8], reset[:, :8]
    if initial is None:
        initial = torch.zeros(3, 4, HEADS, HEAD_DIM, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (preacts, kernel, bias, initial)]
    assert torch.autograd.gradcheck(lambda *x: kernels.slstm_scan(*x, keep, reset), leaves)


def test_a_gradient_reaches_each_input_only_where_the_plain_loop_sends_it():
    """The corner rules of autograd through the loop: at a sequence's first step the stabiliser is
    the input gate and the forget gate's clamp passes the gradient at exactly 1; where the input and
    forget terms tie exactly, torch.maximum splits the gradient of the stabiliser between them. (The
    outputs do not depend on the stabiliser: a loss on the state is what tells the routes apart.)"""
    preacts, kernel, bias, _ = scan_inputs(batch=2, seq_len=1)
    kernel, bias = torch.zeros_like(kernel), torch.zeros_like(bias)  # the gates are the inputs
    preacts[0, 0, 1] = 0.0
    preacts[0, 0, 0] = F.logsigmoid(preacts[0, 0, 1])  # i == log f + m for m = 0, so exp(i - m_new) == 1
    initial = torch.zeros(2, 4, HEADS, HEAD_DIM)
    initial[:, 2] = 1.0  # n = 1, m = 0: a tie; from None (n = 0): the first-step rule
    weights = torch.randn(2, 1, HEADS, HEAD_DIM), torch.randn(2, 4, HEADS, HEAD_DIM)
    for state in (None, initial):

        def gradients(scan):
            leaves = [t.clone().requires_grad_() for t in (preacts, kernel, bias)]
            h, final = scan(*leaves, state, None)
            return torch.autograd.grad((h * weights[0]).sum() + (final * weights[1]).sum(), leaves)

        assert max_difference(gradients(kernels.slstm_scan), gradients(slstm_scan_reference)) <= 1e-6


def test_bf16_inputs_compute_in_fp32():
    """A bf16 model's scan computes in fp32 like the plain loop: bf16 outputs, fp32 final state,
    bf16 gradients, all as the plain loop gives them."""
    preacts, kernel, bias, initial, keep, reset = case_inputs("given state, padded and packed")
    preacts, kernel, bias = (t.bfloat16() for t in (preacts, kernel, bias))
    expected = slstm_scan_reference(preacts, kernel, bias, initial, keep, reset)
    got = kernels.slstm_scan(preacts, kernel, bias, initial, keep, reset)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert max_difference(got, expected) <= 1e-6

    def gradients(scan):
        leaves = [t.clone().requires_grad_() for t in (preacts, kernel, bias)]
        h, final = scan(*leaves, initial, keep, reset)
        (h.float().sum() + final.sum()).backward()
        return [leaf.grad for leaf in leaves]

    got, expected = gradients(kernels.slstm_scan), gradients(slstm_scan_reference)
    assert all(g.dtype == torch.bfloat16 for g in got)
    assert max_difference(got, expected) <= 1e-6


@pytest.mark.parametrize("split", [1, 5])
def test_prefill_then_step_by_step_equals_one_pass(split):
    """A prompt scanned at once, then one token at a time with the state carried, gives the outputs
    and final state of one pass over everything (padding and packing included)."""
    preacts, kernel, bias, initial, keep, reset = case_inputs("padded and packed")
    whole = kernels.slstm_scan(preacts, kernel, bias, None, keep, reset)
    outputs, state = kernels.slstm_scan(preacts[:, :split], kernel, bias, None, keep[:, :split], reset[:, :split])
    outputs = [outputs]
    for t in range(split, preacts.shape[1]):
        part = slice(t, t + 1)
        h, state = kernels.slstm_scan(preacts[:, part], kernel, bias, state, keep[:, part], reset[:, part])
        outputs.append(h)
    assert max_difference((torch.cat(outputs, dim=1), state), whole) <= 1e-6


def test_chunks_of_steps_join_without_a_seam(monkeypatch):
    """Inputs longer than a chunk of steps (`kernels.SLSTM_CHUNK`) give the values and gradients of
    the plain loop across chunk boundaries, with and without gradients."""
    monkeypatch.setattr(kernels, "SLSTM_CHUNK", 4)
    test_scan_computes_what_the_plain_loop_computes("given state, padded and packed", torch.float32)
    test_gradients_are_those_of_autograd_through_the_plain_loop("given state, padded and packed", torch.float64)


def test_inference_keeps_no_history(monkeypatch):
    """Without gradients the scan keeps its outputs and one chunk of steps, no history: what it
    allocates beyond the outputs is the same for 256 and for 2,048 tokens."""
    monkeypatch.setattr(kernels, "SLSTM_CHUNK", 64)
    preacts, kernel, bias, initial = scan_inputs(batch=2, seq_len=2048, state=True)
    allocated = []
    new_empty = torch.Tensor.new_empty

    def counting_new_empty(self, *size, **kwargs):
        tensor = new_empty(self, *size, **kwargs)
        allocated.append(tensor.numel())
        return tensor

    monkeypatch.setattr(torch.Tensor, "new_empty", counting_new_empty)
    beyond_outputs = []
    for seq_len in (256, 2048):
        allocated.clear()
        with torch.no_grad():
            outputs, _ = kernels.slstm_scan(preacts[:, :seq_len], kernel, bias, initial, None)
        beyond_outputs.append(sum(allocated) - outputs.numel())
    assert beyond_outputs[0] == beyond_outputs[1]


def test_an_all_slstm_model_trains_as_with_the_plain_loop(monkeypatch):
    """An all-sLSTM causal LM on padded rows: the same logits and parameter gradients with the scan
    as with the plain loop."""
    model = tiny_model(slstm_layers=(0, 1, 2)).train()
    ids = torch.randint(1, 12, (2, 19))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0

    def run():
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    torch.manual_seed(1)
    logits, grads = run()
    calls = []

    def reference(*args):
        calls.append(args)
        return slstm_scan_reference(*args)

    monkeypatch.setattr(kernels, "slstm_scan", reference)
    torch.manual_seed(1)
    expected_logits, expected_grads = run()
    assert len(calls) == 3  # the comparison ran the plain loop in every block
    assert max_difference([logits], [expected_logits]) <= 1e-6
    for name, grad in grads.items():
        assert max_difference([grad], [expected_grads[name]]) <= 1e-6, name


def deferred_recurrence(preacts, kernel, bias, state, keep) -> kernels.SLSTMRecurrence:
    """An `SLSTMRecurrence` on given gate inputs, written where it is asked to write them."""
    batch, seq_len, _, heads, head_dim = preacts.shape
    gate_major = preacts.permute(2, 3, 0, 1, 4).reshape(4, heads, batch * seq_len, head_dim)

    def gate_inputs(out):
        out = gate_major.clone() if out is None else out.copy_(gate_major)
        return out.view(4, heads, batch, seq_len, head_dim).permute(2, 3, 0, 1, 4)

    layer_input = preacts.new_empty(batch, seq_len, heads * head_dim)
    return kernels.SLSTMRecurrence(gate_inputs, layer_input, kernel, bias, state, keep, None, "native")


def test_recurrences_run_together_give_what_each_gives_alone(monkeypatch):
    """Calls of equal shape run as one scan over all their heads (a given state beside a fresh one);
    a masked call, and one of another length, run alone: each result is its own (to rounding: a
    vectorised operation may round the elements past the last full vector differently)."""
    inputs = []
    for heads, options in ((2, {}), (3, dict(state=True)), (2, dict(keep=True)), (2, dict(length=5))):
        preacts = torch.randn(3, options.get("length", 11), 4, heads, HEAD_DIM) * 2
        kernel = torch.randn(heads, HEAD_DIM, 4, HEAD_DIM) * 0.5
        bias = torch.randn(heads, 4, HEAD_DIM)
        state = None
        if options.get("state"):
            state = torch.randn(3, 4, heads, HEAD_DIM)
            state[:, 2] = state[:, 2].abs() + 1
        inputs.append((preacts, kernel, bias, state, padding() if options.get("keep") else None))
    with torch.no_grad():
        alone = [kernels.slstm_scan(*call) for call in inputs]
        scans = count_scans(monkeypatch)
        together = kernels.SLSTMRecurrence.run_together([deferred_recurrence(*call) for call in inputs])
    assert sorted(shape[3] for shape in scans) == [2, 2, 5]
    for (h, final), (expected_h, expected_final) in zip(together, alone, strict=True):
        assert max_difference((h, final), (expected_h, expected_final)) <= 1e-6


def test_recurrences_run_alone_while_autograd_records(monkeypatch):
    """With autograd on, gate inputs may depend on parameters a call does not show (a LoRA adapter on
    a gate projection): every call runs alone, and its gradients are those of a call made alone."""
    calls = []
    for _ in range(2):
        preacts = (torch.randn(2, 7, 4, 2, HEAD_DIM) * 2).requires_grad_()
        kernel, bias = torch.randn(2, HEAD_DIM, 4, HEAD_DIM) * 0.5, torch.randn(2, 4, HEAD_DIM)
        calls.append((preacts, kernel, bias, None, None))
    expected = [torch.autograd.grad(kernels.slstm_scan(*call)[0].square().sum(), call[0])[0] for call in calls]
    scans = count_scans(monkeypatch)
    together = kernels.SLSTMRecurrence.run_together([deferred_recurrence(*call) for call in calls])
    assert [shape[3] for shape in scans] == [2, 2]
    for (h, _), (preacts, *_), expected_gradient in zip(together, calls, expected, strict=True):
        (gradient,) = torch.autograd.grad(h.square().sum(), preacts)
        assert max_difference(gradient, expected_gradient) <= 1e-6
