"""Triton kernels against the native ones on the same weights. CI has no GPU: these run where
CUDA and Triton are present (e.g. `python -m pytest tests/test_gpu_kernels.py` on a GPU machine)."""

import pytest
import torch
from helpers import tiny_model

from bioxlstm.models import kernels

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton_available()), reason="needs CUDA and triton"
)


@pytest.mark.parametrize("seq_len", [1, 63, 64, 200])
def test_triton_forward_matches_native(seq_len):
    native = tiny_model(chunk_size=64)
    triton = tiny_model(chunk_size=64, kernel="triton")
    triton.load_state_dict(native.state_dict())
    tokens = torch.randint(1, 12, (2, seq_len))
    with torch.no_grad():
        expected = native(tokens).logits
        got = triton.cuda()(tokens.cuda()).logits.cpu()
    assert (got - expected).abs().max() <= 1e-3


def test_triton_decoding_matches_full_forward():
    model = tiny_model(chunk_size=64, kernel="triton").cuda()
    prompt = torch.randint(1, 12, (2, 100), device="cuda")
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = model(out.sequences).logits
    assert (torch.stack(out.logits, dim=1) - full[:, 99:-1]).abs().max() <= 1e-3
