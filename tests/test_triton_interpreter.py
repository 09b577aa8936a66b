"""Every Triton path, on a CPU, through Triton's interpreter (TRITON_INTERPRET=1): the sLSTM's fused
kernel (flashrnn) and the mLSTM's chunkwise and step kernels (mlstm_kernels), forward, backward and
step decoding, through our own dispatch and padding code, against the native path on the same weights,
in fp32. A GPU then only has to confirm speed (benchmarks/gpu_check.sh).

Triton reads TRITON_INTERPRET when a kernel is defined (when flashrnn or mlstm_kernels is first
imported), so the cases run in one child pytest process started with it set; each test here reports
its own case's outcome from that child. Run with TRITON_INTERPRET=1 already set, they run directly.
Needs the test extra (triton 3.7.0, flashrnn): nothing here skips.

Tolerances: the interpreter computes with numpy in fp32 (no TF32), so the fused sLSTM kernel agrees
with the scan to float rounding (measured at most 1.4e-6 on outputs, states and gradients of order 1;
bound 1e-5), Triton's mLSTM kernels with ours to 3e-6 (bound 1e-4 relative), and whole models to
the same (bound 1e-4 on logits, loss and every parameter's gradient, relative to the largest).
"""

import functools
import importlib.util
import inspect
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import perturbed

import bioxlstm
from bioxlstm.models import kernels, mlstm

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The test extra installs triton only on Linux (its wheels); elsewhere these tests cannot run.
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" and importlib.util.find_spec("triton") is None, reason="Triton has no wheel here"
)
THIS_FILE = Path(__file__).resolve()
TOLERANCE = 1e-5
MODEL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def interpreter_outcomes(request, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """The selected tests of this module, run once in a child with TRITON_INTERPRET=1: outcome and
    message by test name."""
    selected = [item.name for item in request.session.items if item.path == THIS_FILE]
    report = tmp_path_factory.mktemp("triton_interpreter") / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += [f"{THIS_FILE}::{name}" for name in selected]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, cwd=THIS_FILE.parents[1])
    if not report.exists():
        pytest.fail(f"the interpreter run wrote no report:\n{child.stdout[-4000:]}\n{child.stderr[-4000:]}")
    outcomes = {"": ("missing", f"the interpreter run's output ends:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        problem = next((e for e in case if e.tag in ("failure", "error", "skipped")), None)
        outcomes[case.get("name")] = (
            ("passed", "") if problem is None else (problem.tag, f"{problem.get('message')}\n{problem.text or ''}")
        )
    return outcomes


def interpreted(test):
    """Run `test` under the interpreter: here when TRITON_INTERPRET=1, else in the child process."""
    if INTERPRETED:
        return test

    @functools.wraps(test)
    def outcome_of_the_interpreted_run(*args, request, **kwargs):
        outcomes = request.getfixturevalue("interpreter_outcomes")
        outcome, message = outcomes.get(request.node.name, outcomes[""])
        if outcome != "passed":  # a skip counts as a failure: every case must run on a CPU
            pytest.fail(f"{outcome} under TRITON_INTERPRET=1: {message}", pytrace=False)

    signature = inspect.signature(test)
    request = inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY)
    parameters = [*signature.parameters.values(), request]
    outcome_of_the_interpreted_run.__signature__ = signature.replace(parameters=parameters)
    return outcome_of_the_interpreted_run


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (got.double() - expected.double()).abs().max().item()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return max_error(got, expected) / max(expected.double().abs().max().item(), 1e-30)


# ---------------------------------------------------------------------------------------------- sLSTM


def slstm_inputs(batch=3, seq_len=13, heads=2, head_dim=16, seed=0):
    """Gate inputs, recurrent matrices and biases (our layouts), and a state as a real run leaves it
    (n >= 1). The kernel runs 13 steps at its compiled length of 14 (`kernels.compiled_length`), so
    the steps appended up to it are part of every test."""
    generator = torch.Generator().manual_seed(seed)
    preacts = torch.randn(batch, seq_len, 4, heads, head_dim, generator=generator)
    kernel = torch.randn(heads, head_dim, 4, head_dim, generator=generator) * 0.2
    bias = torch.randn(heads, 4, head_dim, generator=generator)
    state = torch.randn(batch, 4, heads, head_dim, generator=generator)
    state[:, 2] = state[:, 2].abs() + 1
    return preacts, kernel, bias, state


def slstm_outputs_and_gradients(function, preacts, kernel, bias, state, keep, reset):
    leaves = [t.clone().requires_grad_() for t in (preacts, kernel, bias)]
    h, final = function(*leaves, state, keep, reset)
    weights = torch.linspace(-1, 1, h.numel()).view_as(h)
    return h.detach(), final.detach(), torch.autograd.grad((h * weights).sum(), leaves)


def assert_fused_equals_the_scan(preacts, kernel, bias, state, keep=None, reset=None):
    fused = slstm_outputs_and_gradients(kernels.slstm_fused_triton, preacts, kernel, bias, state, keep, reset)
    scan = slstm_outputs_and_gradients(kernels.slstm_scan, preacts, kernel, bias, state, keep, reset)
    assert max_error(fused[0], scan[0]) < TOLERANCE, "outputs"
    assert max_error(fused[1], scan[1]) < TOLERANCE, "final state"
    for name, got, expected in zip(("gate inputs", "recurrent kernel", "bias"), fused[2], scan[2]):
        assert max_error(got, expected) < TOLERANCE * max(1.0, expected.abs().max().item()), name


@interpreted
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "given state"])
def test_triton_slstm_fused_kernel_equals_the_scan(with_state):
    """flashrnn's fused kernel, through our layouts: outputs, final state and the gradients of gate
    inputs, recurrent matrices and biases are the scan's, from a fresh or a given state."""
    preacts, kernel, bias, state = slstm_inputs()
    assert_fused_equals_the_scan(preacts, kernel, bias, state if with_state else None)


PADDING = {
    "right": torch.arange(13)[None] < torch.tensor([[13], [9], [1]]),
    "left": torch.arange(13)[None] >= torch.tensor([[0], [4], [12]]),
    "scattered and an empty row": torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1]] * 2 + [[0] * 13]).bool(),
}


@interpreted
@pytest.mark.parametrize("padding", PADDING)
def test_triton_slstm_padding_is_exact(padding):
    """Padding leaves the state untouched, on the fused path as on the scan, wherever it sits: left
    padding included (the first real token of a fresh row still starts its stabiliser at its input
    gate), and a row without a real token returns the state it was given."""
    preacts, kernel, bias, state = slstm_inputs()
    assert_fused_equals_the_scan(preacts, kernel, bias, None, keep=PADDING[padding])
    assert_fused_equals_the_scan(preacts, kernel, bias, state, keep=PADDING[padding])


@interpreted
def test_triton_slstm_packed_rows_are_exact():
    """Sequences packed into rows (reset marks each start, one at position 0 too, and two starts in a
    row) each start from zeros; the first one of a row without a reset at 0 continues the row's state."""
    preacts, kernel, bias, state = slstm_inputs()
    reset = torch.zeros(3, 13, dtype=torch.bool)
    reset[0, [5, 6]] = True
    reset[1, [0, 9]] = True
    assert_fused_equals_the_scan(preacts, kernel, bias, None, reset=reset)
    assert_fused_equals_the_scan(preacts, kernel, bias, state, reset=reset)


@interpreted
def test_triton_slstm_dispatch_uses_the_fused_kernel_only_where_it_is_exact(monkeypatch):
    """`slstm_recurrence` runs the fused kernel on backend "triton"; the scan where the kernel's tiles
    do not fit the head dimension, for fp64, for a state that is itself differentiated (the kernel's
    backward drops the initial stabiliser's gradient) and for padded packed rows."""
    calls = []
    fused = kernels.slstm_fused_triton
    monkeypatch.setattr(kernels, "slstm_fused_triton", lambda *a: calls.append("fused") or fused(*a))
    preacts, kernel, bias, state = slstm_inputs(batch=2, seq_len=3)
    keep, reset = torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)

    def runs_fused(preacts=preacts, state=state, keep=None, reset=None, chosen="triton", kernel=kernel, bias=bias):
        calls.clear()
        h, final = kernels.slstm_recurrence(preacts, kernel, bias, state, keep, reset, chosen)
        expected_h, expected_final = kernels.slstm_scan(preacts, kernel, bias, state, keep, reset)
        assert max_error(h, expected_h) < TOLERANCE and max_error(final, expected_final) < TOLERANCE
        return calls == ["fused"]

    assert runs_fused() and runs_fused(keep=keep) and runs_fused(reset=reset) and runs_fused(state=None)
    assert not runs_fused(chosen="native")
    assert not runs_fused(keep=keep, reset=reset)
    assert not runs_fused(state=state.clone().requires_grad_())
    assert not runs_fused(preacts=preacts.double(), state=state.double(), kernel=kernel.double(), bias=bias.double())
    small = slstm_inputs(batch=2, seq_len=3, head_dim=8)
    assert not runs_fused(*small[::3], kernel=small[1], bias=small[2])


@interpreted
def test_triton_slstm_final_state_refuses_a_gradient():
    """flashrnn's backward is exact for what reaches the outputs only: a loss on the final state stops
    with an error instead of getting wrong gradients, and a zero gradient (what checkpointing hands
    an unused output) passes."""
    preacts, kernel, bias, _ = slstm_inputs(batch=2, seq_len=3)
    preacts.requires_grad_()
    h, final = kernels.slstm_fused_triton(preacts, kernel, bias, None)
    torch.autograd.grad((h.sum(), final.sum() * 0), preacts, retain_graph=True)
    with pytest.raises(RuntimeError, match="final state"):
        torch.autograd.grad(final.sum(), preacts)


# ---------------------------------------------------------------------------------------------- mLSTM


def mlstm_inputs(seq_len, batch=2, heads=2, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq_len, dim, generator=generator) for _ in range(3))
    igate = torch.randn(batch, heads, seq_len, generator=generator)
    fgate = torch.randn(batch, heads, seq_len, generator=generator) + 2
    state = (
        torch.randn(batch, heads, dim, dim, generator=generator),
        torch.randn(batch, heads, dim, generator=generator),
        torch.rand(batch, heads, 1, generator=generator) * 4 - 2,
    )
    return [q, k, v, igate, fgate], state


@interpreted
def test_triton_mlstm_prefill_and_step_equal_the_native_kernels():
    """mlstm_kernels' Triton chunkwise kernel (37 tokens, which it runs at 64: below 128 it takes
    powers of two only; from a given state) and its step kernel: outputs and states are ours."""
    inputs, state = mlstm_inputs(37)
    with torch.no_grad():
        for tokens in (slice(0, 37), slice(36, 37)):
            part = [t[:, :, tokens] for t in inputs]
            got_h, got_state = kernels.mlstm_recurrence(*part, state, 16, "triton")
            expected_h, expected_state = kernels.mlstm_recurrence(*part, state, 16, "native")
            assert relative_error(got_h, expected_h) < MODEL_TOLERANCE, tokens
            for got, expected in zip(got_state, expected_state):
                assert relative_error(got, expected) < MODEL_TOLERANCE, tokens


@interpreted
def test_triton_mlstm_training_differentiates_our_kernel():
    """With gradients, backend "triton" runs our chunkwise kernel and our step (the library's backward
    holds the normaliser constant, see the next test); so its gradients are the recurrence's."""
    assert kernels._library_chunkwise("triton", needs_grad=True) is None
    assert kernels._library_chunkwise("triton", needs_grad=False) is not None
    inputs, state = mlstm_inputs(20)
    for tokens in (slice(0, 20), slice(19, 20)):
        grads = {}
        for backend in ("triton", "native"):
            leaves = [t[:, :, tokens].clone().requires_grad_() for t in inputs]
            h, _ = kernels.mlstm_recurrence(*leaves, state, 16, backend)
            weights = torch.linspace(-1, 1, h.numel()).view_as(h)
            grads[backend] = torch.autograd.grad((h * weights).sum(), leaves)
        for got, expected in zip(grads["triton"], grads["native"]):
            assert relative_error(got, expected) < MODEL_TOLERANCE


def mlstm_parallel(q, k, v, igate, fgate, constant_normaliser=False):
    """The mLSTM in its parallel form, in fp64. constant_normaliser: the normaliser max(|q.n|, e^-m)
    and the stabiliser m enter as constants (no gradient through them)."""
    seq_len, dim = q.shape[-2:]
    log_f = F.logsigmoid(fgate.double()).cumsum(-1)
    log_d = log_f[..., :, None] - log_f[..., None, :] + igate.double()[..., None, :]
    log_d = log_d.masked_fill(torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1), float("-inf"))
    m = log_d.amax(-1, keepdim=True)
    m = m.detach() if constant_normaliser else m
    scores = (q.double() @ k.double().transpose(-1, -2)) * dim**-0.5 * torch.exp(log_d - m)
    normaliser = torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + kernels.MLSTM_EPS
    return (scores @ v.double()) / (normaliser.detach() if constant_normaliser else normaliser)


@interpreted
def test_triton_mlstm_library_backward_holds_the_normaliser_constant():
    """Why training does not differentiate mlstm_kernels' Triton kernel (docs/mlstm_triton_backward.md):
    its gradients are those of the mLSTM with the normaliser and stabiliser held constant, to float
    rounding, all five of them; the true gradients of q, k and the gates differ by as much as they are
    large wherever |q.n| is the larger term of the normaliser, as on these inputs. v's agrees."""
    inputs, _ = mlstm_inputs(32, batch=1, heads=1)
    library = kernels._mlstm_kernels().get_mlstm_kernel("chunkwise--triton_xl_chunk")

    def gradients(function):
        leaves = [t.clone().requires_grad_() for t in inputs]
        h = function(*leaves)
        return torch.autograd.grad((h.double() * torch.linspace(-1, 1, h.numel()).view_as(h)).sum(), leaves)

    triton = gradients(lambda q, k, v, i, f: library(q, k, v, i, f, chunk_size=32, eps=kernels.MLSTM_EPS))
    constant = gradients(lambda *x: mlstm_parallel(*x, constant_normaliser=True))
    exact = gradients(mlstm_parallel)
    for name, got, held, true in zip("qkvif", triton, constant, exact):
        assert relative_error(got, held) < MODEL_TOLERANCE, name
        assert (relative_error(got, true) < MODEL_TOLERANCE) == (name == "v"), name


# --------------------------------------------------------------------------------------------- models


def small_model(kind="causal", **overrides):
    """Three blocks (mLSTM, sLSTM, mLSTM) whose kernels the Triton paths accept: mLSTM head dim 32,
    sLSTM head dim 16. kind: causal; masked bidirectional (DNA-xLSTM's whole-block bidirectionality);
    masked reverse-complement (RC-PS, DNA-xLSTM's sLSTM head flip)."""
    settings = dict(vocab_size=12, hidden_size=32, num_hidden_layers=3, num_heads=2, slstm_layers=[1])
    settings.update(chunk_size=16, kernel="native", pad_token_id=0)
    model_class = bioxlstm.BioXLSTMForCausalLM
    if kind != "causal":
        tokenizer = bioxlstm.load_tokenizer("dna")
        settings.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bidirectional=True)
        settings.update(bidirectional_mode="block", complement_map=bioxlstm.complement_map(tokenizer))
        model_class = bioxlstm.BioXLSTMForMaskedLM
    if kind == "masked reverse-complement":  # each strand's blocks are half the hidden size wide
        settings.update(hidden_size=64, rcps=True, rcps_slstm_head_flip=True)
    return perturbed(model_class(bioxlstm.BioXLSTMConfig(**{**settings, **overrides})), 0.1)


def count_triton_calls(monkeypatch) -> dict[str, int]:
    """How often the fused sLSTM kernel and mlstm_kernels' Triton kernels run from here on."""
    calls = {"slstm fused": 0, "mlstm triton": 0}
    fused, recurrence = kernels.slstm_fused_triton, mlstm.mlstm_recurrence

    def counted_fused(*args):
        calls["slstm fused"] += 1
        return fused(*args)

    def counted_recurrence(q, *args):
        kernel = args[6]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, *args[:4]))
        calls["mlstm triton"] += kernel == "triton" and not needs_grad
        return recurrence(q, *args)

    monkeypatch.setattr(kernels, "slstm_fused_triton", counted_fused)
    monkeypatch.setattr(mlstm, "mlstm_recurrence", counted_recurrence)
    return calls


def on_triton(model):
    twin = type(model)(bioxlstm.BioXLSTMConfig(**{**model.config.to_dict(), "kernel": "triton"}))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def assert_same_training_step(native, triton, **batch):
    """Loss and every parameter's gradient of one training step agree."""
    losses = {}
    for name, model in (("native", native), ("triton", triton)):
        model.zero_grad()
        losses[name] = model(**batch).loss
        losses[name].backward()
    assert abs(losses["triton"].item() - losses["native"].item()) < MODEL_TOLERANCE
    for (name, ours), theirs in zip(native.named_parameters(), triton.parameters()):
        assert max_error(theirs.grad, ours.grad) <= MODEL_TOLERANCE * max(1.0, ours.grad.abs().max().item()), name


@interpreted
def test_triton_causal_stack_prefill_and_decoding_match_native(monkeypatch):
    """A left-padded batch of prompts (attention_mask), prefilled and then decoded token by token
    (greedy), on Triton: logits at every step and the chosen tokens are the native model's."""
    native = small_model()
    triton = on_triton(native)
    calls = count_triton_calls(monkeypatch)
    prompts = torch.randint(1, 12, (2, 21))
    mask = torch.ones_like(prompts)
    mask[1, :6] = 0
    runs = {}
    for name, model in (("native", native), ("triton", triton)):
        runs[name] = model.generate(
            prompts, attention_mask=mask, max_new_tokens=3, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    assert torch.equal(runs["triton"].sequences, runs["native"].sequences)
    for got, expected in zip(runs["triton"].logits, runs["native"].logits):
        assert relative_error(got, expected) < MODEL_TOLERANCE
    assert calls == {"slstm fused": 3, "mlstm triton": 6}  # prefill and two steps: one per block


@interpreted
@pytest.mark.parametrize("rows", ["padded", "packed"])
def test_triton_causal_stack_training_matches_native(rows, monkeypatch):
    """One training step of the mixed stack on Triton (sLSTM fused forward and backward; mLSTM on our
    kernel, see above): right-padded rows with labels -100 on the padding, or packed rows (seq_idx)."""
    native = small_model().train()
    triton = on_triton(native).train()
    calls = count_triton_calls(monkeypatch)
    tokens = torch.randint(1, 12, (2, 21))
    if rows == "padded":
        mask = torch.ones_like(tokens)
        mask[1, 13:] = 0
        batch = dict(input_ids=tokens, attention_mask=mask, labels=tokens.masked_fill(mask == 0, -100))
    else:
        seq_idx = torch.tensor([[0] * 8 + [1] * 13, [0] * 3 + [1] * 1 + [2] * 17])
        batch = dict(input_ids=tokens, labels=tokens, seq_idx=seq_idx)
    assert_same_training_step(native, triton, **batch)
    assert calls["slstm fused"] == 1


@interpreted
@pytest.mark.parametrize("kind", ["masked bidirectional", "masked reverse-complement"])
def test_triton_bidirectional_and_rcps_stacks_match_native(kind, monkeypatch):
    """Masked LMs whose blocks read each row and its reversal (and, RC-PS, both strands) on Triton:
    logits of a right-padded batch and a training step's loss and gradients are the native model's."""
    native = small_model(kind)
    triton = on_triton(native)
    calls = count_triton_calls(monkeypatch)
    tokens = torch.randint(5, native.config.vocab_size, (2, 18))
    mask = torch.ones_like(tokens)
    mask[0, 11:] = 0
    with torch.no_grad():
        expected = native(tokens, attention_mask=mask).logits
        got = triton(tokens, attention_mask=mask).logits
    assert relative_error(got, expected) < MODEL_TOLERANCE
    labels = tokens.masked_fill((mask == 0) | (torch.rand(tokens.shape) < 0.5), -100)
    batch = dict(input_ids=tokens, attention_mask=mask, labels=labels)
    assert_same_training_step(native.train(), triton.train(), **batch)
    assert calls == {"slstm fused": 2, "mlstm triton": 2}  # inference on Triton; training's sLSTM too
