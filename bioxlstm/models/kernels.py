"""The one place that chooses and calls recurrence kernels.

This module ships inside every exported model (remote code on plain `transformers`), so its CPU
path imports nothing beyond torch: the chunkwise mLSTM (training and prompt prefill, linear in
length) and the step (decoding) below are our own, written from the recurrence in DESIGN.md.
`mlstm_kernels` (NXAI Community License; see NOTICE) is used only where it is installed and adds
something ours lacks: its Triton kernels on CUDA, and on the CPU its custom-backward chunkwise kernel
for fp32 training, which recomputes chunk states instead of keeping autograd graphs. Inference on a
CPU always runs our kernels, so a model computes the same numbers with and without the library.
The sLSTM is strictly sequential; its native scan below follows the reference semantics of the
official `xlstm` package. Swapping an implementation means editing this module only.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F

# Gate pre-activations that make a position a no-op: the input gate closed (exp(-1e4) == 0 in
# fp32) and the forget gate open (logsigmoid(1e4) == 0 in fp32). Padding is exactly invisible.
INPUT_GATE_CLOSED = -1.0e4
FORGET_GATE_OPEN = 1.0e4
# A forget gate that erases the state: it scales the memory by e^-100 (~4e-44) relative to the new
# input, far below fp32 resolution for any input-gate range a trained model uses, while the chunkwise
# kernel's cumulative log-gate sums stay small enough for fp32 to resolve gates within a sequence.
FORGET_GATE_CLOSED = -100.0

MLSTM_EPS = 1e-6

# Without autograd, a causal model on the native backend reads a long input this many tokens at a
# time, every block's state carried from one segment to the next (exact: it is the recurrence). A
# segment's activations then stay in the CPU caches and the allocator reuses them instead of mapping
# fresh pages for every large tensor: an 8,192-token prefill of the 10M-parameter benchmark model ran
# 1.6x faster in segments of 512-1,024 tokens than in one pass, in a fraction of the memory. GPU
# kernels want the whole input at once.
NATIVE_INFERENCE_SEGMENT = 1024


@lru_cache(maxsize=None)
def triton_available() -> bool:
    # Asked on every forward pass of every block (resolve_backend); a failed import searches the path anew each time.
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _mlstm_kernels():
    """`mlstm_kernels.torch`, or None where it is not installed: an exported model runs where only
    torch and transformers are. The import sits in a `try`, which transformers' scan of remote code
    for required packages skips."""
    try:
        import mlstm_kernels.torch as library
    except ImportError:
        return None
    return library


def mlstm_kernels_available() -> bool:
    return _mlstm_kernels() is not None


def resolve_backend(kernel: str, device: torch.device) -> str:
    """Map `config.kernel` and the tensors' device to the backend that runs: native or triton."""
    # torch on CUDA brings `triton` along, but the Triton mLSTM kernels come with `mlstm_kernels`.
    triton_runs = device.type == "cuda" and triton_available() and mlstm_kernels_available()
    if kernel == "native":
        return "native"
    if kernel == "triton":
        if not triton_runs:
            raise RuntimeError(
                "kernel='triton' needs a CUDA device and the `triton` and `mlstm_kernels` packages; "
                "use kernel='auto' or 'native' on this machine"
            )
        return "triton"
    return "triton" if triton_runs else "native"


def inference_segment_length(backend: str) -> int | None:
    """Tokens per segment for inference on `backend` (see NATIVE_INFERENCE_SEGMENT); None: one pass."""
    return NATIVE_INFERENCE_SEGMENT if backend == "native" else None


def _library_chunkwise(backend: str, dtype: torch.dtype):
    """`mlstm_kernels`' chunkwise kernel where it is the one to run, else None (ours runs)."""
    if backend == "triton":
        return _mlstm_kernels().get_mlstm_kernel("chunkwise--triton_xl_chunk")
    if torch.is_grad_enabled() and dtype == torch.float32 and mlstm_kernels_available():
        return _mlstm_kernels().get_mlstm_kernel("chunkwise--native_custbw")
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
    backend: str,
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
    if seq_len == 1:
        step = _mlstm_kernels().get_mlstm_step_kernel("triton") if backend == "triton" else mlstm_step_native
        kwargs = {"overwrite_state": overwrite_state} if step is mlstm_step_native else {}
        h, state = step(q[:, :, 0], k[:, :, 0], v[:, :, 0], igate, fgate, *state, eps=MLSTM_EPS, **kwargs)
        return h[:, :, None].to(q.dtype), state
    # A prompt shorter than a chunk is one chunk of its own length (no padding to compute).
    chunk = chunk_size if seq_len >= chunk_size or backend == "triton" else seq_len
    length = compiled_length(seq_len, chunk) if backend == "triton" else -(-seq_len // chunk) * chunk
    padded = padded_with_no_ops(length, q, k, v, igate, fgate)
    library = _library_chunkwise(backend, q.dtype)
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


def padded_with_no_ops(length: int, q, k, v, igate, fgate) -> tuple[torch.Tensor, ...]:
    """The mLSTM inputs with no-op positions appended up to `length`: the state passes them unchanged."""
    pad = length - q.shape[2]
    if pad == 0:
        return q, k, v, igate, fgate
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    return q, k, v, F.pad(igate, (0, pad), value=INPUT_GATE_CLOSED), F.pad(fgate, (0, pad), value=FORGET_GATE_OPEN)


def slstm_scan(
    preacts: torch.Tensor,
    recurrent_kernel: torch.Tensor,
    bias: torch.Tensor,
    state: torch.Tensor | None,
    keep: torch.Tensor | None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sLSTM recurrence step by step.

    preacts: input contributions to the gates (B, S, 4, NH, DH) in the order i, f, z, o;
    recurrent_kernel: (NH, DH, 4, DH), block-diagonal per head; bias: (NH, 4, DH);
    state: (B, 4, NH, DH) holding (h, c, n, m), or None for zeros; keep: (B, S) bool, False at
    positions that must leave the state untouched (padding); reset: (B, S) bool, True where a new
    sequence starts, which then sees a zero state.
    Returns the hidden outputs (B, S, NH, DH) in the dtype of `preacts` and the final state, in fp32
    for a bf16 or fp16 model: like the mLSTM memory, the running sums c and n would otherwise round
    at every step.
    """
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
        # A sequence's first step (n == 0) starts its stabiliser at the input gate, as the reference does.
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
