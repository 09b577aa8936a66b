"""The one place that chooses and calls recurrence kernels.

The mLSTM kernels come from `mlstm_kernels` (NXAI Community License; see NOTICE): the chunkwise
kernel for training and prompt prefill (linear in length, any length through the library's
padding wrapper) and the step kernel for decoding, native PyTorch on CPU and Triton on CUDA.
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


def resolve_backend(kernel: str, device: torch.device) -> str:
    """Map `config.kernel` and the tensors' device to the backend that runs: native or triton."""
    if kernel == "native":
        return "native"
    if kernel == "triton":
        if device.type != "cuda" or not triton_available():
            raise RuntimeError(
                "kernel='triton' needs a CUDA device and the `triton` package; "
                "use kernel='auto' or 'native' on this machine"
            )
        return "triton"
    return "triton" if device.type == "cuda" and triton_available() else "native"


def inference_segment_length(backend: str) -> int | None:
    """Tokens per segment for inference on `backend` (see NATIVE_INFERENCE_SEGMENT); None: one pass."""
    return NATIVE_INFERENCE_SEGMENT if backend == "native" else None


@lru_cache(maxsize=None)
def _mlstm_functions(backend: str, training: bool):
    from mlstm_kernels.torch import get_mlstm_kernel, get_mlstm_step_kernel

    if backend == "triton":
        chunkwise = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        step = get_mlstm_step_kernel("triton")
    else:
        # The custom-backward kernel recomputes chunk states instead of storing autograd graphs.
        chunkwise = get_mlstm_kernel("chunkwise--native_custbw" if training else "chunkwise--native_autograd")
        step = mlstm_step_native
    return chunkwise, step


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
    the step kernel; longer inputs the chunkwise kernel, padded to a multiple of the chunk size (on
    Triton, to one of a few lengths: `compiled_length`).
    overwrite_state: the caller discards `state`, so a native step may write the new one into it.
    """
    from mlstm_kernels.torch.kernel_wrappers import wrap_chunkwise__arbitrary_sequence_length_with_padding

    chunkwise, step = _mlstm_functions(backend, torch.is_grad_enabled())
    c, n, m = state if state is not None else (None, None, None)
    seq_len = q.shape[2]
    if overwrite_state and seq_len == 1 and state is not None and step is mlstm_step_native:
        h, state = step(q[:, :, 0], k[:, :, 0], v[:, :, 0], igate, fgate, c, n, m, overwrite_state=True)
        return h[:, :, None].to(q.dtype), state
    # The chunkwise kernels need a multiple of the chunk size; a short prompt is one chunk.
    chunk = chunk_size if seq_len >= chunk_size or backend == "triton" else max(seq_len, 1)
    if backend == "triton" and seq_len > 1:
        q, k, v, igate, fgate = padded_with_no_ops(compiled_length(seq_len, chunk), q, k, v, igate, fgate)
    h, (c, n, m) = wrap_chunkwise__arbitrary_sequence_length_with_padding(
        mlstm_chunkwise_kernel=chunkwise,
        mlstm_sequence_kernel=None,
        mlstm_step_kernel=step,
        q=q,
        k=k,
        v=v,
        f=fgate,
        i=igate,
        c_initial=c,
        n_initial=n,
        m_initial=m,
        return_last_states=True,
        eps=MLSTM_EPS,
        autocast_kernel_dtype=torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32,
        chunk_size=chunk,
        dtype_state=torch.float32,
    )
    return h[:, :, :seq_len].to(q.dtype), (c, n, m)


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
    Returns the hidden outputs (B, S, NH, DH) and the final state.
    """
    batch, seq_len, _, heads, head_dim = preacts.shape
    if state is None:
        state = preacts.new_zeros(batch, 4, heads, head_dim)
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
    return torch.stack(outputs, dim=1), torch.stack((h, c, n, m), dim=1)
