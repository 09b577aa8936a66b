"""The one place that chooses and calls recurrence kernels.

This module ships inside every exported model (remote code on plain `transformers`), so its CPU
path imports nothing beyond torch: the chunkwise mLSTM (training and prompt prefill, linear in
length) and the step (decoding) below are our own, written from the recurrences in
docs/recurrences.md.
`mlstm_kernels` (NXAI Community License; see NOTICE) is used only where it is installed and adds
something ours lacks: its Triton kernels on CUDA, for prefill and decoding. Training differentiates
ours on every device (`_library_chunkwise` says why), and a CPU always runs ours, so a model computes
the same numbers and gradients with and without the library.
The sLSTM is strictly sequential; its native scan below follows the reference semantics of the
official `xlstm` package, with a hand-written backward (one reverse loop over stored states); on
CUDA, flashrnn's fused Triton kernel runs it where installed (the last section). Swapping an
implementation means editing this module only.
"""

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .layers import records_gradients

# Gate pre-activations that make a position a no-op: the input gate closed (exp(-1e4) == 0 in
# fp32) and the forget gate open (logsigmoid(1e4) == 0 in fp32). Padding is exactly invisible.
INPUT_GATE_CLOSED = -1.0e4
FORGET_GATE_OPEN = 1.0e4
# A forget gate that erases the state: it scales the memory by e^-100 (~4e-44) relative to the new
# input, far below fp32 resolution for any input-gate range a trained model uses, while the chunkwise
# kernel's cumulative log-gate sums stay small enough for fp32 to resolve gates within a sequence.
FORGET_GATE_CLOSED = -100.0

MLSTM_EPS = 1e-6

# Without autograd, a causal model on the native kernel reads a long input a segment of tokens at a
# time, every block's state carried from one segment to the next (exact: it is the recurrence). A
# segment's activations then stay in the CPU caches and the allocator reuses them instead of mapping
# fresh pages for every large tensor: an 8,192-token prefill of the 10M-parameter benchmark model ran
# 1.6x faster in segments of 512-1,024 tokens than in one pass, in a fraction of the memory. What
# counts is rows (batch x tokens): at batch 8 and 1,024 tokens, segments of 256 tokens ran the
# all-mLSTM benchmark model 1.7x and the all-sLSTM one 1.1x faster than segments of 1,024. Segments
# stay between 64 tokens (one mLSTM chunk) and 1,024. GPU kernels want the whole input at once.
NATIVE_INFERENCE_ROWS = 2048
NATIVE_INFERENCE_SEGMENT = 1024
SHORTEST_INFERENCE_SEGMENT = 64


@lru_cache(maxsize=None)
def _installed(module: str):
    """The module named `module`, or None where it is not installed: an exported model runs where only
    torch and transformers are. Imported by name, which transformers' scan of remote code for required
    packages does not see; cached, since the kernels are asked on every forward pass of every block
    and a failed import searches the path anew each time."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def triton_available() -> bool:
    return _installed("triton") is not None


def _mlstm_kernels():
    """`mlstm_kernels.torch`, or None where it is not installed."""
    return _installed("mlstm_kernels.torch")


def mlstm_kernels_available() -> bool:
    return _mlstm_kernels() is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, which triton reads when
    a kernel is defined, so it must be set before triton is imported): on the CPU, with numpy."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """Map `config.kernel` and the tensors' device to the kernel that runs: native or triton.

    kernel="triton" on a CPU is allowed only under the Triton interpreter (`triton_interpreted`), so
    that the test suite runs every Triton path without a GPU (tests/test_triton_interpreter.py);
    kernel="auto" on a CPU stays native even there, since interpreted kernels are slow."""
    # torch on CUDA brings `triton` along, but the Triton mLSTM kernels come with `mlstm_kernels`.
    triton_runs = device.type == "cuda" and triton_available() and mlstm_kernels_available()
    if kernel == "native":
        return "native"
    if kernel == "triton":
        interpreted = device.type == "cpu" and triton_interpreted() and triton_available() and mlstm_kernels_available()
        if not (triton_runs or interpreted):
            raise RuntimeError(
                "kernel='triton' needs a CUDA device (or TRITON_INTERPRET=1 on a CPU) and the `triton` and "
                "`mlstm_kernels` packages (pip install \"bioxlstm[gpu]\"); use kernel='auto' or 'native' on this machine"
            )
        return "triton"
    return "triton" if triton_runs else "native"


def inference_segment_length(kernel: str, batch: int) -> int | None:
    """Tokens per segment for inference of `batch` rows on `kernel` (see NATIVE_INFERENCE_ROWS);
    None: one pass."""
    if kernel != "native":
        return None
    return min(NATIVE_INFERENCE_SEGMENT, max(SHORTEST_INFERENCE_SEGMENT, NATIVE_INFERENCE_ROWS // batch))


def _library_chunkwise(kernel: str, needs_grad: bool | None = None):
    """`mlstm_kernels`' chunkwise kernel where it is the one to run, else None (ours runs).

    needs_grad: whether the outputs will be differentiated (default: whether autograd records)."""
    needs_grad = torch.is_grad_enabled() if needs_grad is None else needs_grad
    if kernel == "triton":
        # Training on CUDA differentiates ours: mlstm_kernels' custom backwards (the Triton one and
        # native_custbw alike) hold the normaliser max(|q.n|, exp(-m)) and the stabiliser m constant,
        # so their q, k and gate gradients differ from the mLSTM's wherever |q.n| is the larger
        # (docs/mlstm_triton_backward.md). Ours is autograd through the recurrence's own arithmetic.
        # The same holds for its CPU native_custbw, which a CPU therefore never trains with either.
        return None if needs_grad else _mlstm_kernels().get_mlstm_kernel("chunkwise--triton_xl_chunk")
    return None


def mlstm_step_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c: torch.Tensor,
    n: torch.Tensor,
    m: torch.Tensor,
    eps: float = MLSTM_EPS,
    dtype_state: torch.dtype = torch.float32,
    overwrite_state: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One mLSTM step, the math of `mlstm_kernels`' native step kernel (same arguments and results:
    q, k (B, NH, DHQK), v (B, NH, DHV), i, f (B, NH, 1), state c, n, m) with the memory matrix
    decayed and then updated in place by one fused multiply-add (`baddbmm_`), instead of three
    passes over it: decoding on a CPU is bound by reading and writing that matrix.

    overwrite_state: write the new memory matrix into `c` instead of a new tensor, for a caller that
    discards the old state. A fresh matrix per step costs, at batch 16, more in the kernel's page
    handling than in arithmetic (it is megabytes per block, which the allocator maps anew each time)."""
    dtype = q.dtype
    q, k, v, i, f = (t.to(dtype_state) for t in (q, k, v, i, f))
    batch, heads, qk_dim = q.shape
    v_dim = v.shape[-1]
    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    f_act, i_act = torch.exp(log_f + m - m_new), torch.exp(i - m_new)
    if overwrite_state and c.dtype == dtype_state:
        c_new = c.mul_(f_act[..., None])
    else:  # in place on the fresh product, so the matrix is read and written once more, not copied first
        c_new = c.to(dtype_state) * f_act[..., None]
    c_new.view(-1, qk_dim, v_dim).baddbmm_((k * i_act).reshape(-1, qk_dim, 1), v.reshape(-1, 1, v_dim))
    n_new = f_act * n.to(dtype_state) + i_act * k
    q = q * qk_dim**-0.5
    numerator = (q.unsqueeze(2) @ c_new).squeeze(2)
    denominator = torch.maximum((q * n_new).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + eps
    return (numerator / denominator).to(dtype), (c_new, n_new, m_new)


def mlstm_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    chunk_size: int,
    kernel: str,
    overwrite_state: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the mLSTM over a sequence and return the outputs and the final (C, n, m) state.

    q, k, v: (B, NH, S, DH); igate, fgate: gate pre-activations (B, NH, S); state: (C, n, m) with
    shapes (B, NH, DH, DH), (B, NH, DH), (B, NH, 1), or None for a fresh sequence. One token uses
    the step kernel; longer inputs a chunkwise kernel, padded with no-op positions to a multiple of
    the chunk size (on Triton, to one of a few lengths: `compiled_length`). The state is fp32 and
    the outputs have the dtype of q.
    overwrite_state: the caller discards `state`, so a native step may write the new one into it.
    """
    seq_len = q.shape[2]
    if state is None:
        state = fresh_mlstm_state(q, v)
        overwrite_state = True
    needs_grad = records_gradients(q, k, v, igate, fgate, *state)
    if seq_len == 1:
        # The Triton step kernel has no backward; a differentiated step runs ours.
        triton_step = kernel == "triton" and not needs_grad
        step = _mlstm_kernels().get_mlstm_step_kernel("triton") if triton_step else mlstm_step_native
        kwargs = {"overwrite_state": overwrite_state} if step is mlstm_step_native else {}
        h, state = step(q[:, :, 0], k[:, :, 0], v[:, :, 0], igate, fgate, *state, eps=MLSTM_EPS, **kwargs)
        return h[:, :, None].to(q.dtype), state
    # A prompt shorter than a chunk is one chunk of its own length (no padding to compute).
    chunk = chunk_size if seq_len >= chunk_size or kernel == "triton" else seq_len
    length = _triton_chunkwise_length(seq_len, chunk) if kernel == "triton" else -(-seq_len // chunk) * chunk
    padded = padded_with_no_ops(length, q, k, v, igate, fgate)
    library = _library_chunkwise(kernel, needs_grad)
    if library is None:
        h, state = mlstm_chunkwise_native(*padded, state, chunk)
    else:
        c, n, m = state
        h, state = library(
            *padded[:3], i=padded[3], f=padded[4], c_initial=c, n_initial=n, m_initial=m, return_last_states=True,
            eps=MLSTM_EPS, chunk_size=chunk,
            autocast_kernel_dtype=torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32,
        )  # fmt: skip
    return h[:, :, :seq_len].to(q.dtype), state


def fresh_mlstm_state(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (C, n, m) state before the first token: all zeros, in fp32."""
    batch, heads, _, qk_dim = q.shape
    zeros = dict(device=q.device, dtype=torch.float32)
    return (
        torch.zeros(batch, heads, qk_dim, v.shape[-1], **zeros),
        torch.zeros(batch, heads, qk_dim, **zeros),
        torch.zeros(batch, heads, 1, **zeros),
    )


def mlstm_chunkwise_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    chunk_size: int,
    eps: float = MLSTM_EPS,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The mLSTM over a sequence whose length is a multiple of `chunk_size`, chunk by chunk.

    Within a chunk every output is a weighted sum over the chunk's keys (a masked, gate-weighted
    attention, computed for all chunks at once) plus the state carried in from the chunk's start;
    only those start states are computed one chunk after the other. Each output divides by the
    same stabiliser m_t as the step recurrence, so the two agree to float rounding, and the final
    (C, n, m) is the state the step kernel continues from. Computes in fp32 (fp64 for fp64 inputs)
    whatever the input dtype, bf16 included, and returns h (B, NH, S, DHV) in the dtype of q.
    """
    batch, heads, seq_len, qk_dim = q.shape
    chunks, out_dtype = seq_len // chunk_size, q.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32)

    def by_chunk(t: torch.Tensor) -> torch.Tensor:
        return t.to(compute_dtype).reshape(batch, heads, chunks, chunk_size, *t.shape[3:])

    # Scaling q (not k) keeps C in the convention of the step kernel, which continues from it.
    q, k, v = by_chunk(q * qk_dim**-0.5), by_chunk(k), by_chunk(v)
    igate = by_chunk(igate)
    # log of the product of forget gates from the chunk's start up to and including each position
    log_decay = F.logsigmoid(by_chunk(fgate)).cumsum(-1)
    starts, final = _chunk_start_states(k, v, igate, log_decay, tuple(t.to(compute_dtype) for t in state))
    h = _chunk_outputs(q, k, v, igate, log_decay, starts, eps)
    return h.reshape(batch, heads, seq_len, -1).to(out_dtype), final


def _chunk_start_states(k, v, igate, log_decay, state):
    """(C, n, m) at the start of every chunk, stacked on dim 2, and the state after the last one.

    A chunk adds sum_j exp(a_j - m) k_j v_j^T, a_j = (decay from j to the chunk's end) + i_j. The
    sums are formed for all chunks at once, each under its own max(a_j) so that every exponent is
    <= 0; the sequential part is then only a rescaled addition per chunk.
    """
    log_weight_at_end = log_decay[..., -1:] - log_decay + igate  # (B, NH, NC, L)
    local_max = log_weight_at_end.amax(-1)  # (B, NH, NC)
    weighted_k = k * torch.exp(log_weight_at_end - local_max[..., None])[..., None]
    c_updates = weighted_k.transpose(-1, -2) @ v  # (B, NH, NC, DHQK, DHV)
    n_updates = weighted_k.sum(-2)  # (B, NH, NC, DHQK)
    chunk_decay = log_decay[..., -1]  # (B, NH, NC)
    c, n, m = state
    m = m[..., 0]
    starts = ([], [], [])
    for index in range(chunk_decay.shape[-1]):
        for kept, value in zip(starts, (c, n, m)):
            kept.append(value)
        m_next = torch.maximum(chunk_decay[..., index] + m, local_max[..., index])
        carried = torch.exp(chunk_decay[..., index] + m - m_next)[..., None]
        added = torch.exp(local_max[..., index] - m_next)[..., None]
        c = carried[..., None] * c + added[..., None] * c_updates[:, :, index]
        n = carried * n + added * n_updates[:, :, index]
        m = m_next
    return tuple(torch.stack(kept, dim=2) for kept in starts), (c, n, m[..., None])


def _chunk_outputs(q, k, v, igate, log_decay, starts, eps):
    """h for every position of every chunk (B, NH, NC, L, DHV), from the chunk's keys and start state.

    Key j reaches position t >= j of its chunk with log weight D_tj = (decay from j to t) + i_j and
    the start state with log weight log_decay_t + m_start; m_t is the larger of the two maxima,
    which is the step recurrence's stabiliser at t.
    """
    c_start, n_start, m_start = starts
    chunk_size = q.shape[-2]
    future = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    log_weights = (log_decay[..., :, None] - log_decay[..., None, :] + igate[..., None, :]).masked_fill(
        future, float("-inf")
    )  # (B, NH, NC, L, L)
    log_weight_of_start = log_decay + m_start[..., None]  # (B, NH, NC, L)
    m = torch.maximum(log_weight_of_start, log_weights.amax(-1))
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_weights - m[..., None])
    q_start = q * torch.exp(log_weight_of_start - m)[..., None]
    numerator = q_start @ c_start + scores @ v
    denominator = (q_start @ n_start[..., None])[..., 0] + scores.sum(-1)
    denominator = torch.maximum(denominator.abs(), torch.exp(-m)) + eps
    return numerator / denominator[..., None]


def compiled_length(seq_len: int, chunk_size: int) -> int:
    """The length the Triton chunkwise kernels run `seq_len` tokens at.

    Those kernels take the sequence length as a compile-time constant, so every new length compiles
    a new set (about 15 s for a training step's on an H200): packed training rows, whose length
    changes with every batch, spent most of a short GPU run compiling. So lengths go up to a multiple
    of the chunk size and to one of four steps per doubling (beyond four chunks at most 25% more
    tokens): a handful of shapes covers a whole run.
    """
    step = max(chunk_size, 1 << max(seq_len.bit_length() - 3, 0))
    step = -(-step // chunk_size) * chunk_size
    return -(-seq_len // step) * step


def _triton_chunkwise_length(seq_len: int, chunk_size: int) -> int:
    """The length mlstm_kernels' Triton chunkwise kernel runs `seq_len` tokens at: `compiled_length`,
    except that below 128 tokens the kernel takes only a power of two of at least 16 (as one chunk of
    that length; its `kernel_param_heuristics` assert it), so 37 tokens run at 64, not at 48."""
    if seq_len < 128:
        return max(16, 1 << (seq_len - 1).bit_length())
    return compiled_length(seq_len, chunk_size)


def padded_with_no_ops(length: int, q, k, v, igate, fgate) -> tuple[torch.Tensor, ...]:
    """The mLSTM inputs with no-op positions appended up to `length`: the state passes them unchanged."""
    pad = length - q.shape[2]
    if pad == 0:
        return q, k, v, igate, fgate
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    return q, k, v, F.pad(igate, (0, pad), value=INPUT_GATE_CLOSED), F.pad(fgate, (0, pad), value=FORGET_GATE_OPEN)


# Steps whose gate coefficients the sLSTM backward computes at once (its memory is ~32 floats per
# state element per step of a chunk); also the steps whose inputs inference holds at a time.
SLSTM_CHUNK = 128


def slstm_scan(
    preacts: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    state: torch.Tensor | None,
    keep: torch.Tensor | None,
    reset: torch.Tensor | None = None,
    overwrite_preacts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sLSTM recurrence step by step.

    preacts: input contributions to the gates (B, S, 4, NH, DH) in the order i, f, z, o;
    recurrent_kernel: (NH, DH, 4, DH), block-diagonal per head; bias: (NH, 4, DH);
    state: (B, 4, NH, DH) holding (h, c, n, m), or None for zeros; keep: (B, S) bool, False at
    positions that must leave the state untouched (padding); reset: (B, S) bool, True where a new
    sequence starts, which then sees a zero state.
    overwrite_preacts: the caller discards `preacts`, so a pass without gradients may compute in
    them instead of copying them chunk by chunk.
    Returns the hidden outputs (B, S, NH, DH) in the dtype of `preacts` and the final state, in fp32
    for a bf16 or fp16 model: like the mLSTM memory, the running sums c and n would otherwise round
    at every step.

    Each step is a handful of operations on tensors too small to amortise their call cost, so the
    number of operations per step is what the scan keeps low: 13 forward, 6 backward (a hand-written
    reverse loop over the stored states, `_SLSTMScan`), where autograd through the plain loop ran
    about 25 forward, twice that backward, and a graph node for each. Everything that does not
    depend on the previous step (input contributions and bias, the backward's per-step coefficients)
    is computed for a chunk of steps at once. Without gradients no history is kept: memory is the
    outputs plus one chunk of inputs, whatever the length.
    """
    out_dtype = preacts.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    preacts, recurrent_kernel, bias = (t.to(compute_dtype) for t in (preacts, recurrent_kernel, bias))
    if state is None:
        batch, _, _, heads, head_dim = preacts.shape
        state = preacts.new_zeros(batch, 4, heads, head_dim)
    else:
        state = state.to(compute_dtype)
    if records_gradients(preacts, recurrent_kernel, bias, state):
        h, final = _SLSTMScan.apply(preacts, recurrent_kernel, bias, state, keep, reset)
    elif preacts.shape[1] == 1:
        h, final = _slstm_decoding_step(preacts, recurrent_kernel, bias, state, keep, reset)
    else:
        h, final, _ = _slstm_forward(preacts, recurrent_kernel, bias, state, keep, reset, False, overwrite_preacts)
    return h.to(out_dtype), final


def _slstm_decoding_step(preacts, kernel, bias, state, keep, reset):
    """One step without gradients: the recurrence without the buffers and views that pay off over
    many steps (for one they cost more than the step)."""
    batch, _, _, heads, head_dim = preacts.shape
    h, c, n, m = state.unbind(1)
    if reset is not None:
        fresh = ~reset[:, 0, None, None]
        h, c, n, m = (v * fresh for v in (h, c, n, m))
    recurrent = torch.bmm(h.transpose(0, 1), kernel.reshape(heads, head_dim, 4 * head_dim))
    gates = (preacts[:, 0] + bias.transpose(0, 1)).add_(recurrent.view(heads, batch, 4, head_dim).permute(1, 2, 0, 3))
    i, f, z, o = gates.unbind(1)
    log_f_plus_m = m + F.softplus(f, -1.0)  # log sigmoid(f), as in `_slstm_forward`
    m_new = torch.where(n == 0, i, torch.maximum(i, log_f_plus_m))
    i_act, f_act = torch.exp(torch.stack([i, log_f_plus_m]) - m_new).clamp_(max=1.0).unbind(0)
    c_new = torch.addcmul(f_act * c, i_act, torch.tanh(z))
    n_new = torch.addcmul(i_act, f_act, n)
    h_new = torch.sigmoid(o) * c_new / n_new
    new = torch.stack([h_new, c_new, n_new, m_new], dim=1)
    if keep is not None:
        new = torch.where(keep[:, 0, None, None, None], new, torch.stack([h, c, n, m], dim=1))
    return new[:, 0, None], new


def _slstm_step_flags(preacts: torch.Tensor, keep, reset) -> torch.Tensor | list | None:
    """Per step: (may a row start from n == 0, does a row reset, does a row keep its old state), as
    rows of a (S, 3) bool tensor on the CPU; None without masks (then only step 0 starts anew).

    n == 0 (the first-step rule, and the clamps it makes necessary) is possible only where a row has
    not had a real step since its sequence started: n after a real step is at least min(n, 1) > 0,
    since one of the two stabilised gates is exactly exp(0) = 1. The first step of every call counts
    as a start (a given state may hold zeros). Knowing this per step spares three operations on all
    other steps; it costs one read of the masks.
    """
    seq_len = preacts.shape[1]
    if keep is None and reset is None:
        return None
    if seq_len == 1:  # a decoding step: the extra operations cost less than reading the masks
        return [[True, reset is not None, keep is not None]]
    batch = preacts.shape[0]
    device = keep.device if keep is not None else reset.device
    position = torch.arange(seq_len, device=device).expand(batch, seq_len)
    keep = torch.ones(batch, seq_len, dtype=torch.bool, device=device) if keep is None else keep.bool()
    reset = torch.zeros(batch, seq_len, dtype=torch.bool, device=device) if reset is None else reset.bool()
    starts = reset.clone()
    starts[:, 0] = True
    last_start = torch.where(starts, position, -1).cummax(1).values
    last_real = torch.where(keep, position, -1).cummax(1).values
    last_real_before = torch.cat([last_real.new_full((batch, 1), -1), last_real[:, :-1]], dim=1)
    fresh = last_real_before < last_start
    return torch.stack([fresh.any(0), reset.any(0), (~keep).any(0)], dim=1).cpu()


def _chunk_flags(flags, start: int, stop: int) -> list:
    """`_slstm_step_flags` for steps start to stop, as Python lists: one read per chunk of steps."""
    if flags is None:
        return [(step == 0, False, False) for step in range(start, stop)]
    return flags[start:stop] if isinstance(flags, list) else flags[start:stop].tolist()


def _slstm_forward(preacts, kernel, bias, state, keep, reset, keep_history: bool, overwrite_preacts: bool = False):
    """The sLSTM scan in the dtype of its inputs (fp32 or fp64), without autograd.

    Works head-major and gate-major: a step's gates are (4, NH, B, DH), so the recurrent contribution
    is one batched matmul over heads and every elementwise operation runs over contiguous memory.
    Each step computes in one work buffer, whose views are made once: a view costs about as much as
    an operation. Returns h (B, S, NH, DH), written there step by step (without history, the
    outputs are all the scan keeps of h), the final state (B, 4, NH, DH) and, with keep_history,
    what the backward reads: h (S + 1, NH, B, DH) before every step and after the last, (c, n)
    (S + 1, 2, NH, B, DH), m (S + 1, NH, B, DH) and the gates (S, 4, NH, B, DH) as the step left
    them: i, log f + m, sigmoid(2 z), sigmoid(o).

    tanh(z) is computed as 2 sigmoid(2 z) - 1, with z's share of the recurrent matrices and inputs
    doubled beforehand: one sigmoid over z and o together and an addition take two thirds of the
    time of tanh and a sigmoid (CPU tanh is several times the cost of sigmoid per element).
    """
    batch, seq_len, _, heads, head_dim = preacts.shape
    flags = _slstm_step_flags(preacts, keep, reset)
    doubled_z = torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=preacts.dtype, device=preacts.device)[:, None]
    kernel = (kernel * doubled_z).reshape(heads, head_dim, 4 * head_dim)
    # (4, NH, B, DH): with its batch rows written out, adding it runs over contiguous memory
    bias = (bias.transpose(0, 1)[:, :, None] * doubled_z[:, :, None, None]).expand(4, heads, batch, head_dim).contiguous()
    kept_steps = seq_len + 1 if keep_history else 2  # without history, the state alternates between two slots
    outputs = preacts.new_empty(batch, seq_len, heads, head_dim)
    cn_all = preacts.new_empty(kept_steps, 2, heads, batch, head_dim)
    m_all = preacts.new_empty(kept_steps, heads, batch, head_dim)
    initial = state.permute(1, 2, 0, 3)  # (4, NH, B, DH)
    h, cn_all[0], m_all[0] = initial[0], initial[1:3], initial[3]
    if not overwrite_preacts:
        inputs = preacts.new_empty(min(seq_len, SLSTM_CHUNK), 4, heads, batch, head_dim)
    gates = preacts.new_empty(seq_len, 4, heads, batch, head_dim) if keep_history else None
    recurrent = preacts.new_empty(heads, batch, 4 * head_dim)
    work = preacts.new_empty(4, heads, batch, head_dim)
    z_and_one = preacts.new_ones(2, heads, batch, head_dim)  # [tanh(z), 1]: times i, the update of (c, n)
    minus_one = preacts.new_full((heads, batch, head_dim), -1.0)
    exps = preacts.new_empty(2, heads, batch, head_dim)  # exp of (i, log f + m) less the new m
    with torch.inference_mode():  # no autograd bookkeeping in the loop: its tensors stay inside
        recurrent_by_gate = recurrent.view(heads, batch, 4, head_dim).permute(2, 0, 1, 3)
        i_gate, log_f_plus_m, z_sigmoid, o_act = work.unbind(0)
        i_and_log_f, z_and_o, i_exp, f_exp, z_act = work[:2], work[2:], exps[:1], exps[1:], z_and_one[0]
        if keep is not None:
            keep_all = keep.bool().t()[:, None, None, :, None]  # (1, 1, B, 1) per step
        if reset is not None:
            fresh_all = (~reset.bool()).t().to(preacts.dtype)[:, None, None, :, None]
        if not keep_history:  # two slots, alternating
            cn_steps, m_steps = cn_all.unbind(0), m_all.unbind(0)
            c_steps, n_steps = cn_all[:, 0].unbind(0), cn_all[:, 1].unbind(0)
        # Views of one chunk of steps at a time: a view is a few hundred bytes, which for every step
        # of a long input would add up to more than the outputs.
        for start in range(0, seq_len, SLSTM_CHUNK):
            stop = min(start + SLSTM_CHUNK, seq_len)
            chunk = preacts[:, start:stop].permute(1, 2, 3, 0, 4)
            if not overwrite_preacts:
                # A plain copy first: reading the inputs across their layout and computing on them
                # in one operation took 2.5 times as long as the two apart.
                chunk = inputs[: stop - start].copy_(chunk)
            torch.addcmul(bias, chunk, doubled_z[:, :, None, None], out=chunk)
            input_steps, h_steps = chunk.unbind(0), outputs[:, start:stop].permute(1, 2, 0, 3).unbind(0)
            if keep_history:
                cn_steps, m_steps = cn_all[start : stop + 1].unbind(0), m_all[start : stop + 1].unbind(0)
                c_steps, n_steps = cn_all[start : stop + 1, 0].unbind(0), cn_all[start : stop + 1, 1].unbind(0)
                gate_steps = gates[start:stop].unbind(0)
            if keep is not None:
                keep_steps = keep_all[start:stop].unbind(0)
            if reset is not None:
                fresh_steps = fresh_all[start:stop].unbind(0)
            for t, (first, resets, masked) in enumerate(_chunk_flags(flags, start, stop)):
                step = start + t
                old, new = (t, t + 1) if keep_history else (step % 2, (step + 1) % 2)
                cn, m = cn_steps[old], m_steps[old]
                if resets:
                    fresh = fresh_steps[t]
                    h, cn, m = h * fresh[0], cn * fresh, m * fresh[0]
                torch.bmm(h, kernel, out=recurrent)
                torch.add(input_steps[t], recurrent_by_gate, out=work)
                # log sigmoid(f) as softplus with beta -1: the same function, without log_sigmoid's
                # second output
                F.softplus(log_f_plus_m, -1.0, out=log_f_plus_m).add_(m)
                m_new = torch.maximum(i_gate, log_f_plus_m, out=m_steps[new])
                if first:  # a sequence's first step starts its stabiliser at the input gate
                    torch.where(cn[1] == 0, i_gate, m_new, out=m_new)
                torch.sub(i_and_log_f, m_new, out=exps).exp_()
                if first:  # elsewhere both are exp of at most 0
                    exps.clamp_(max=1.0)
                z_and_o.sigmoid_()
                torch.add(minus_one, z_sigmoid, alpha=2.0, out=z_act)
                cn_new = torch.mul(cn, f_exp, out=cn_steps[new]).addcmul_(z_and_one, i_exp)
                h_new = torch.div(c_steps[new], n_steps[new], out=h_steps[t]).mul_(o_act)
                if masked:
                    kept = keep_steps[t]
                    torch.where(kept[0], h_new, h, out=h_new)
                    torch.where(kept, cn_new, cn, out=cn_new)
                    torch.where(kept[0], m_new, m, out=m_new)
                if keep_history:
                    gate_steps[t].copy_(work)
                h = h_new
    last = seq_len if keep_history else seq_len % 2
    final = torch.cat([h[None], cn_all[last], m_all[last, None]]).permute(2, 0, 1, 3)
    history = None
    if keep_history:
        h_all = torch.cat([initial[:1], outputs.permute(1, 2, 0, 3)])
        history = (h_all, cn_all, m_all, gates)
    return outputs, final.contiguous(), history


class _SLSTMScan(torch.autograd.Function):
    """The sLSTM scan with a hand-written backward: one reverse loop over the stored states.

    Every step's gradient map, from the gradients of (c, n, m, h) after the step to those of its
    gate pre-activations and of (c, n, m, h) before it, is linear with per-element coefficients that
    depend only on stored forward values. They are computed for a chunk of steps at once; the
    reverse loop then applies them (four fused multiply-adds) and adds the recurrent matrix's share
    (one matmul). The gradients are those of autograd through the plain loop, including its corner
    rules: torch.maximum splits the gradient of a tie evenly, clamp(max=1) passes it at 1 and not
    above, and a masked or restarted step routes it as torch.where and the multiplication do.
    """

    @staticmethod
    def forward(ctx, preacts, kernel, bias, state, keep, reset):
        outputs, final, history = _slstm_forward(preacts, kernel, bias, state, keep, reset, keep_history=True)
        ctx.save_for_backward(preacts, kernel, bias, keep, reset, *history)
        return outputs, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, grad_final):
        preacts, kernel, bias, keep, reset, h_all, cn_all, m_all, gates = ctx.saved_tensors
        grads = _slstm_backward(
            preacts, kernel, bias, keep, reset, h_all, cn_all, m_all, gates, grad_outputs, grad_final
        )
        return (*grads, None, None)


def _slstm_backward(preacts, kernel, bias, keep, reset, h_all, cn_all, m_all, gates, grad_outputs, grad_final):
    """Gradients of the gate inputs, recurrent matrices, biases and initial state (see `_SLSTMScan`)."""
    batch, seq_len, _, heads, head_dim = preacts.shape
    dtype = preacts.dtype
    flags = _slstm_step_flags(preacts, keep, reset)
    # grads[t]: rows 0-3 the gradients of step t's gate pre-activations (i, f, z, o), rows 4-7 those
    # of (c, n, m, h) before step t, which is what step t - 1 reads.
    grads = preacts.new_zeros(seq_len + 1, heads, batch, 8, head_dim)
    if grad_outputs is not None:
        grads[1:, :, :, 7] = grad_outputs.permute(1, 2, 0, 3)
    if grad_final is not None:
        grads[seq_len, :, :, 4:7] += grad_final[:, 1:].permute(2, 0, 1, 3)
        grads[seq_len, :, :, 7] += grad_final[:, 0].transpose(0, 1)
    kernel_t = kernel.reshape(heads, head_dim, 4 * head_dim).transpose(1, 2)
    if reset is not None:
        fresh_all = (~reset.bool()).t().to(dtype)  # (S, B)
    with torch.inference_mode():  # as in the forward: no autograd bookkeeping in the loop
        for start in reversed(range(0, seq_len, SLSTM_CHUNK)):
            stop = min(start + SLSTM_CHUNK, seq_len)
            fresh = None if reset is None else fresh_all[start:stop, None, :, None]
            kept = None if keep is None else keep.bool().t()[start:stop, None, :, None, None]
            coefficients = _slstm_backward_coefficients(
                preacts[:, start:stop], kernel, bias, h_all[start:stop], cn_all[start:stop], m_all[start:stop],
                gates[start:stop], fresh, kept,
            )  # fmt: skip
            coefficient_steps = [c.unbind(0) for c in coefficients]
            window = grads[start : stop + 1]  # views of one chunk at a time, as in the forward
            grad_steps, h_grad_steps = window.unbind(0), window[:, :, :, 7].unbind(0)
            gate_grad_steps = window[:, :, :, :4].flatten(3).unbind(0)
            later_grads = [window[:, :, :, 4 + p : 5 + p].unbind(0) for p in range(4)]  # (c, n, m, h) after
            fresh_h_steps = None if reset is None else fresh.unbind(0)  # (1, B, 1) per step
            chunk_flags = _chunk_flags(flags, start, stop)
            for t in reversed(range(stop - start)):
                grad = grad_steps[t]
                for p in range(4):
                    grad.addcmul_(coefficient_steps[p][t], later_grads[p][t + 1])
                recurrent = torch.bmm(gate_grad_steps[t], kernel_t)
                if chunk_flags[t][1]:  # a restarted row's step read a zero h
                    recurrent.mul_(fresh_h_steps[t])
                h_grad_steps[t].add_(recurrent)
    gate_grads = grads[:seq_len, :, :, :4]  # (S, NH, B, 4, DH)
    h_before = h_all[:seq_len] if reset is None else h_all[:seq_len] * fresh_all[:, None, :, None]
    grad_kernel = torch.bmm(
        h_before.transpose(0, 1).reshape(heads, seq_len * batch, head_dim).transpose(1, 2),
        gate_grads.transpose(0, 1).reshape(heads, seq_len * batch, 4 * head_dim),
    ).view(heads, head_dim, 4, head_dim)
    grad_bias = gate_grads.sum((0, 2))
    grad_preacts = gate_grads.permute(2, 0, 3, 1, 4).contiguous()
    grad_state = grads[0][:, :, [7, 4, 5, 6]].permute(1, 2, 0, 3).contiguous()
    return grad_preacts, grad_kernel, grad_bias, grad_state


def _slstm_backward_coefficients(preacts, kernel, bias, h, cn, m, gates, fresh, kept):
    """For a chunk of T steps, four (T, NH, B, 8, DH) tensors: the coefficients by which the
    gradients of c, n, m and h after a step enter the 8 gradient rows of `_slstm_backward`."""
    if fresh is not None:  # a restarted row's step read a zero state
        h, cn, m = h * fresh, cn * fresh[:, None], m * fresh
    c, n = cn[:, 0], cn[:, 1]
    i, log_f_plus_m, z_sigmoid, o_act = gates.unbind(1)
    z_act = 2.0 * z_sigmoid - 1.0  # tanh(z), as the forward computed it
    # f itself was overwritten by log f + m, whose difference from m loses digits; recompute it
    f = (preacts[:, :, 1] + bias[:, 1]).transpose(0, 2).transpose(0, 1) + torch.matmul(h, kernel[:, :, 1])
    first = n == 0
    m_new = torch.where(first, i, torch.maximum(i, log_f_plus_m))
    i_exp, f_exp = torch.exp(i - m_new), torch.exp(log_f_plus_m - m_new)
    i_act, f_act = i_exp.clamp(max=1.0), f_exp.clamp(max=1.0)
    i_slope = torch.where(i_exp <= 1.0, i_exp, 0.0)  # d i_act / d(i - m_new)
    f_slope = torch.where(f_exp <= 1.0, f_exp, 0.0)
    n_new = f_act * n + i_act
    ratio = (f_act * c + i_act * z_act) / n_new
    h_new = o_act * ratio
    h_to_c = o_act / n_new  # d h_new / d c_new
    h_to_n = -h_new / n_new
    # how the gradient of m_new divides between i and log f + m (routes of where and maximum)
    to_i = torch.where(first | (i > log_f_plus_m), 1.0, torch.where(i == log_f_plus_m, 0.5, 0.0))
    to_f = torch.where(first, 0.0, 1.0 - to_i)
    f_sigmoid_slope = torch.sigmoid(-f)  # d log sigmoid(f) / d f
    z_slope = i_act * (1.0 - z_act * z_act)
    # gradient of (i - m_new) and of (log f + m - m_new), per unit gradient of c_new, n_new and h
    i_part = (z_act * i_slope, i_slope, (h_to_c * z_act + h_to_n) * i_slope)
    f_part = (c * f_slope, n * f_slope, (h_to_c * c + h_to_n * n) * f_slope)
    zero = torch.zeros_like(i)
    rows = []
    for p, (a, b) in enumerate(zip((*i_part[:2], None, i_part[2]), (*f_part[:2], None, f_part[2]))):
        if a is None:  # m after the step: only through m_new
            grad_i, grad_log_f = to_i, to_f
        else:
            grad_i = (1.0 - to_i) * a - to_i * b
            grad_log_f = (1.0 - to_f) * b - to_f * a
        grad_f = grad_log_f * f_sigmoid_slope
        if p == 0:
            row = (grad_i, grad_f, z_slope, zero, f_act, zero, grad_log_f, zero)
        elif p == 1:
            row = (grad_i, grad_f, zero, zero, zero, f_act, grad_log_f, zero)
        elif p == 2:
            row = (grad_i, grad_f, zero, zero, zero, zero, grad_log_f, zero)
        else:
            o_slope = ratio * o_act * (1.0 - o_act)
            row = (grad_i, grad_f, h_to_c * z_slope, o_slope, f_act * h_to_c, f_act * h_to_n, grad_log_f, zero)
        row = torch.stack(row, dim=3)
        if kept is not None:  # a masked step passes every gradient on to the state before it
            row = torch.where(kept, row, F.one_hot(torch.tensor(4 + p), 8).to(row)[:, None])
        if fresh is not None:
            row[:, :, :, 4:] *= fresh[..., None]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# sLSTM on Triton: flashrnn's fused kernel (an optional dependency, Apache-2.0, see NOTICE) runs a
# whole sequence in one launch per direction of the pass, with the recurrent matrices kept on chip.
# ------------------------------------------------------------------------------------------------

# The fused kernel multiplies (batch x DH) by (DH x DH) blocks with tl.dot, which wants power-of-two
# sides of at least 16, and keeps the four recurrent blocks of a head on chip: flashrnn documents
# head dimensions up to 64 for it.
SLSTM_FUSED_HEAD_DIMS = (16, 32, 64)


def _flashrnn():
    """`flashrnn.flashrnn`, or None where flashrnn is not installed (the sLSTM then runs `slstm_scan`)."""
    library = _installed("flashrnn")
    return None if library is None else library.flashrnn


def flashrnn_available() -> bool:
    return _flashrnn() is not None


def slstm_recurrence(
    preacts: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    state: torch.Tensor | None,
    keep: torch.Tensor | None,
    reset: torch.Tensor | None,
    kernel: str,
    overwrite_preacts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sLSTM over a sequence, with the arguments and results of `slstm_scan`. `kernel` is what
    `resolve_kernel` chose: with "triton", flashrnn's fused Triton kernel runs wherever it computes
    the result exactly; the scan runs everywhere else."""
    if _slstm_runs_fused(preacts, state, keep, reset, kernel):
        return slstm_fused_triton(preacts, recurrent_kernel, bias, state, keep, reset)
    return slstm_scan(preacts, recurrent_kernel, bias, state, keep, reset, overwrite_preacts)


@dataclass
class SLSTMRecurrence:
    """An `slstm_recurrence` call, yielded by the sLSTM layer's `stages` so that a model can run those
    of several blocks as one. Its gate inputs are computed when it runs: `gate_inputs(out)` returns
    them, (B, S, 4, NH, DH), as a view of gate-major (4, NH, B x S, DH) memory, written into `out`
    where one is given (only without autograd): a slice of the heads of several calls' inputs, which
    need no copying then.
    They are the caller's to discard, so the scan computes in them."""

    gate_inputs: Callable[[torch.Tensor | None], torch.Tensor]
    layer_input: torch.Tensor  # (B, S, D): the batch, length, dtype and device of the gate inputs
    recurrent_kernel: torch.Tensor
    bias: torch.Tensor
    state: torch.Tensor | None
    keep: torch.Tensor | None
    reset: torch.Tensor | None
    kernel: str

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        return slstm_recurrence(
            self.gate_inputs(None), self.recurrent_kernel, self.bias, self.state, self.keep, self.reset, self.kernel,
            overwrite_preacts=True,
        )  # fmt: skip

    @staticmethod
    def run_together(calls: list["SLSTMRecurrence"]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The results of `run` for each call. Heads never interact, so calls on inputs of the same
        batch, length, head size and dtype run as one scan over all their heads: a step of the scan
        costs about as much at four heads as at sixteen. Alone: calls on Triton (the fused kernel
        takes a whole sequence in one launch anyway), with masks (each call's differ), for one step,
        or with autograd on: gate inputs are written into a given slice only without it, and any
        parameter of their projections (a LoRA adapter's too) may be one that autograd records."""
        groups = {}
        for index, call in enumerate(calls):
            batch, seq_len, _ = call.layer_input.shape
            alone = (
                call.kernel != "native" or call.keep is not None or call.reset is not None or seq_len == 1
                or torch.is_grad_enabled()
            )  # fmt: skip
            key = (batch, seq_len, call.recurrent_kernel.shape[1], call.layer_input.dtype, call.layer_input.device)
            groups.setdefault(index if alone else key, []).append(index)
        results = [None] * len(calls)
        for indices in groups.values():
            together = [calls[index] for index in indices]
            outcomes = [together[0].run()] if len(together) == 1 else SLSTMRecurrence._one_scan(together)
            for index, outcome in zip(indices, outcomes):
                results[index] = outcome
        return results

    @staticmethod
    def _one_scan(calls: list["SLSTMRecurrence"]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        first = calls[0]
        batch, seq_len, _ = first.layer_input.shape
        head_dim = first.recurrent_kernel.shape[1]
        heads = [call.recurrent_kernel.shape[0] for call in calls]
        gates = first.layer_input.new_empty(4, sum(heads), batch * seq_len, head_dim)
        for call, slot in zip(calls, gates.split(heads, dim=1)):
            call.gate_inputs(slot)
        state = None
        if any(call.state is not None for call in calls):
            state_dtype = torch.promote_types(gates.dtype, torch.float32)
            fresh = gates.new_zeros(batch, 4, 1, head_dim, dtype=state_dtype)
            state = torch.cat(
                [fresh.expand(-1, -1, n, -1) if call.state is None else call.state.to(state_dtype) for call, n in zip(calls, heads)],
                dim=2,
            )  # fmt: skip
        outputs, final = slstm_scan(
            gates.view(4, sum(heads), batch, seq_len, head_dim).permute(2, 3, 0, 1, 4),
            torch.cat([call.recurrent_kernel for call in calls]),
            torch.cat([call.bias for call in calls]),
            state, None, None, overwrite_preacts=True,
        )  # fmt: skip
        return [(h, f.contiguous()) for h, f in zip(outputs.split(heads, dim=2), final.split(heads, dim=2))]


def _slstm_runs_fused(preacts, state, keep, reset, kernel: str) -> bool:
    if kernel != "triton" or not flashrnn_available():
        return False
    if preacts.shape[-1] not in SLSTM_FUSED_HEAD_DIMS or preacts.dtype == torch.float64:
        return False  # the kernel's tile shapes; it has no fp64 variant
    if torch.is_grad_enabled() and state is not None and state.requires_grad:
        # flashrnn 1.0.8's fused backward returns zero for the gradient of the initial stabiliser m
        # (and reads the gradient of n from c's slot): its gradients are exact only for what reaches
        # the outputs h from the gate inputs, recurrent matrices and biases. A differentiated state
        # (truncated backpropagation through a carried state) takes the scan.
        return False
    if keep is not None and reset is not None:
        # A reset on a padding position zeroes the state that the row's next real token reads; the
        # rearrangements below express padding or packing, not both. No caller packs padded rows.
        return False
    return True


def slstm_fused_triton(
    preacts: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    state: torch.Tensor | None,
    keep: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`slstm_scan` on flashrnn's fused Triton kernel (same arguments and results; not both keep and
    reset), exactly: the kernel has no masks, so the inputs are rearranged instead.

    Padding (keep, left, right or anywhere): a padding position leaves the state untouched, so the
    recurrence over a row is that over its real tokens alone. The real tokens move to the front of
    their row in order, the kernel runs them from the row's state, and every position reads the
    state after the last real token at or before it (the given state where there is none). Moving
    them is what keeps the first-step rule exact: left padding run in place would have to keep n at
    0 through the padding, which no gate value does (the kernel's n after any step is at least 1).
    Packed rows (reset): every sequence runs as a row of its own from a zero state (the row's first
    one from the row's state, unless a reset starts the row) and its outputs go back to their places.
    Runs in fp32 (bf16 and fp16 inputs too: the scan's states are fp32) at one of a few compiled
    lengths (`compiled_length`): the kernel is compiled per sequence length and batch size.
    """
    batch, seq_len, _, heads, head_dim = preacts.shape
    out_dtype = preacts.dtype
    preacts, recurrent_kernel, bias = (t.float() for t in (preacts, recurrent_kernel, bias))
    state = preacts.new_zeros(batch, 4, heads, head_dim) if state is None else state.float()
    if reset is not None:
        h, final = _slstm_fused_packed(preacts, recurrent_kernel, bias, state, reset.bool())
    else:
        if keep is not None:
            keep = keep.bool()
            real_first = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)
            preacts = preacts.gather(1, real_first[:, :, None, None, None].expand_as(preacts))
            # index into the kernel's states (0: before the first token) of the state after position t
            after = keep.long().cumsum(1)
        else:
            after = torch.arange(1, seq_len + 1, device=preacts.device).expand(batch, seq_len)
        states = _slstm_fused_states(preacts, recurrent_kernel, bias, state)
        rows = torch.arange(batch, device=preacts.device)[:, None]
        h = states[rows, after, 0]
        final = states[rows[:, 0], after[:, -1]]
    return h.to(out_dtype), _StateWithoutGradient.apply(final) if final.requires_grad else final


def _slstm_fused_packed(preacts, recurrent_kernel, bias, state, reset):
    """Packed rows as one row per sequence (see `slstm_fused_triton`): outputs and final states."""
    batch, seq_len = reset.shape
    position = torch.arange(seq_len, device=preacts.device).expand(batch, seq_len)
    starts = reset.clone()
    starts[:, 0] = True
    offset = position - torch.where(starts, position, 0).cummax(1).values  # position within its sequence
    sequence = starts.flatten().cumsum(0).view(batch, seq_len) - 1  # one row per sequence, row-major
    count, longest = int(sequence[-1, -1]) + 1, int(offset.max()) + 1
    unpacked = preacts.new_zeros(count, longest, *preacts.shape[2:])
    unpacked = unpacked.index_put((sequence, offset), preacts)
    continues = (~reset[:, 0])[:, None, None, None]
    initial = preacts.new_zeros(count, *state.shape[1:]).index_put((sequence[:, 0],), state * continues)
    states = _slstm_fused_states(unpacked, recurrent_kernel, bias, initial)
    return states[sequence, offset + 1, 0], states[sequence[:, -1], offset[:, -1] + 1]


def _slstm_fused_states(preacts, recurrent_kernel, bias, state) -> torch.Tensor:
    """Every state the fused kernel passes through, (B, 1 + S, 4, NH, DH): the given one, then the
    state after each step, as (h, c, n, m). Runs at `compiled_length` steps (the extra steps come
    after the last one read, so they change nothing read)."""
    seq_len = preacts.shape[1]
    length = compiled_length(seq_len, 1)
    padded = F.pad(preacts, (0, 0, 0, 0, 0, 0, 0, length - seq_len))
    # flashrnn's layouts: gate inputs as ours (B, T, gate, NH, DH), recurrent matrices
    # (gate, NH, DH out, DH in), biases (gate, NH, DH), states (state, B, T=1, NH, DH); results
    # (state, B, T, NH, DH) for every step and (state, B, 1, NH, DH) for the last.
    states, _ = _flashrnn()(
        padded, recurrent_kernel.permute(2, 0, 3, 1), bias.permute(1, 0, 2),
        states=state.transpose(0, 1)[:, :, None], function="slstm", backend="triton_fused", dtype="float32",
    )  # fmt: skip
    return torch.cat([state[:, None], states.permute(1, 2, 0, 3, 4)[:, :seq_len]], dim=1)


class _StateWithoutGradient(torch.autograd.Function):
    """The fused path's final state, refusing a gradient: flashrnn 1.0.8's fused backward is exact for
    gradients that reach the outputs h only (see `_slstm_runs_fused`), so a loss that reads the final
    (c, n, m) would get wrong gradients without a word. Training losses read outputs; a caller that
    differentiates through a carried state runs kernel="native"."""

    @staticmethod
    def forward(ctx, state):
        return state.clone()  # not a view: a caller may update the state it is handed in place

    @staticmethod
    def backward(ctx, grad):
        # Gradient checkpointing hands zeros to outputs that no loss reads.
        if torch.count_nonzero(grad):
            raise RuntimeError(
                "the fused sLSTM kernel cannot differentiate its final state; run this model with kernel='native'"
            )
        return grad
