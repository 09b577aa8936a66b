"""The shared block stack and causal LM: equivalence of every execution path, padding
invariance, generation, training and persistence."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import CAUSAL_VARIANTS, count_scans, mlstm_reference, tiny_model

import bioxlstm
from bioxlstm.models import kernels, layers, mlstm

GLOBINS = Path(__file__).resolve().parents[1] / "data" / "globins45.fa"


# --- kernels against plain references -------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 5, 16, 37, 64])
def test_mlstm_kernel_matches_stepwise_reference(seq_len):
    """Chunkwise (any length, padded to the chunk) and step kernels compute the recurrence of
    docs/recurrences.md, and a sequence split in two with the state carried gives the same outputs."""
    q, k, v = (torch.randn(2, 3, seq_len, 8) for _ in range(3))
    igate, fgate = torch.randn(2, 3, seq_len), torch.randn(2, 3, seq_len) + 2
    expected = mlstm_reference(q, k, v, igate, fgate)
    h, _ = kernels.mlstm_recurrence(q, k, v, igate, fgate, None, chunk_size=16, kernel="native")
    assert (h.double() - expected).abs().max() < 1e-4

    split = seq_len // 2
    if split:
        h1, state = kernels.mlstm_recurrence(
            q[:, :, :split], k[:, :, :split], v[:, :, :split], igate[..., :split], fgate[..., :split], None, 16, "native"
        )
        h2, _ = kernels.mlstm_recurrence(
            q[:, :, split:], k[:, :, split:], v[:, :, split:], igate[..., split:], fgate[..., split:], state, 16, "native"
        )
        assert (torch.cat([h1, h2], dim=2).double() - expected).abs().max() < 1e-4


def test_triton_lengths_are_padded_to_a_few_compiled_shapes():
    """The Triton kernels compile once per sequence length: every length from 2 to 32,768 runs at
    one of a few dozen lengths, each a multiple of the chunk size and at most 25% longer."""
    for chunk in (64, 48):
        lengths = {seq_len: kernels.compiled_length(seq_len, chunk) for seq_len in range(2, 32769)}
        for seq_len, padded in lengths.items():
            assert padded % chunk == 0 and seq_len <= padded <= max(1.25 * seq_len, chunk) + chunk
        assert len(set(lengths.values())) <= 40


def test_no_op_positions_leave_outputs_and_state_unchanged():
    """Positions appended with closed input and open forget gates (how Triton inputs reach their
    compiled length) change neither the real positions' outputs nor the final state."""
    q, k, v = (torch.randn(2, 3, 37, 8) for _ in range(3))
    igate, fgate = torch.randn(2, 3, 37), torch.randn(2, 3, 37) + 2
    h, state = kernels.mlstm_recurrence(q, k, v, igate, fgate, None, 16, "native")
    padded = kernels.padded_with_no_ops(kernels.compiled_length(37, 16), q, k, v, igate, fgate)
    assert padded[0].shape[2] == 48
    h_padded, state_padded = kernels.mlstm_recurrence(*padded, None, 16, "native")
    assert (h_padded[:, :, :37] - h).abs().max() < 1e-5
    for got, expected in zip(state_padded, state):
        assert (got - expected).abs().max() < 1e-5


def test_native_step_kernel_decodes_like_the_reference_and_the_library_step():
    """Our fused CPU step, run token by token from a fresh state, follows the recurrence, and on any
    state it returns what `mlstm_kernels`' native step returns (also for bf16 inputs)."""
    from mlstm_kernels.torch import get_mlstm_step_kernel

    q, k, v = (torch.randn(3, 2, 20, 16) for _ in range(3))
    igate, fgate = torch.randn(3, 2, 20), torch.randn(3, 2, 20) + 2
    expected = mlstm_reference(q, k, v, igate, fgate)
    state, outputs = None, []
    for t in range(20):
        h, state = kernels.mlstm_recurrence(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], igate[..., t : t + 1], fgate[..., t : t + 1],
            state, 16, "native",
        )  # fmt: skip
        outputs.append(h)
    assert (torch.cat(outputs, dim=2).double() - expected).abs().max() < 1e-4

    library_step = get_mlstm_step_kernel("native")
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        inputs = dict(q=q[:, :, 0].to(dtype), k=k[:, :, 0].to(dtype), v=v[:, :, 0].to(dtype),
                      i=igate[..., :1], f=fgate[..., :1], c=state[0], n=state[1], m=state[2])
        ours, ours_state = kernels.mlstm_step_native(**inputs, eps=kernels.MLSTM_EPS)
        theirs, their_state = library_step(**inputs, eps=kernels.MLSTM_EPS)
        assert ours.dtype == theirs.dtype == dtype
        assert (ours.float() - theirs.float()).abs().max() < tolerance
        for a, b in zip(ours_state, their_state):
            # The library multiplies bf16 k and v in bf16, ours in fp32: they agree to bf16 precision.
            assert a.dtype == b.dtype == torch.float32 and (a - b).abs().max() < tolerance


def test_kernel_choice():
    cpu = torch.device("cpu")
    assert kernels.resolve_kernel("auto", cpu) == "native"
    assert kernels.resolve_kernel("native", cpu) == "native"
    with pytest.raises(RuntimeError, match="kernel='triton' needs a CUDA device"):
        kernels.resolve_kernel("triton", cpu)
    with pytest.raises(ValueError, match="kernel must be one of"):
        bioxlstm.BioXLSTMConfig(kernel="cuda")


# --- layers against plain PyTorch -------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
def test_causal_convolution_is_a_depthwise_conv1d_over_its_window(with_state):
    """Outputs, next state and gradients as conv1d's, whichever way it computes them: with autograd
    (shifted views), without (a channels-last conv2d) and for one decoding step."""
    torch.manual_seed(0)
    conv = layers.CausalConv1d(12, 4)
    x = torch.randn(3, 9, 12, requires_grad=True)
    state = torch.randn(3, 3, 12) if with_state else None
    window = torch.cat([state if with_state else torch.zeros(3, 3, 12), x], dim=1)
    expected = F.conv1d(window.transpose(1, 2), conv.conv.weight, conv.conv.bias, groups=12).transpose(1, 2)
    y, new_state = conv(x, state)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert torch.equal(new_state, window[:, -3:])
    grads = torch.autograd.grad((y * torch.arange(12.0)).sum(), [x, conv.conv.weight, conv.conv.bias])
    expected_grads = torch.autograd.grad((expected * torch.arange(12.0)).sum(), [x, conv.conv.weight, conv.conv.bias])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with torch.no_grad():
        inferred, inferred_state = conv(x, state)
        step, step_state = conv(x[:, :1], state)
    assert inferred.shape == expected.shape
    torch.testing.assert_close(inferred, expected, rtol=0, atol=1e-6)
    assert torch.equal(inferred_state, window[:, -3:])
    torch.testing.assert_close(step, expected[:, :1], rtol=0, atol=1e-6)
    assert torch.equal(step_state, window[:, 1:4])


def test_causal_convolution_restarts_where_a_packed_sequence_starts():
    torch.manual_seed(0)
    conv = layers.CausalConv1d(5, 3)
    x, state = torch.randn(1, 7, 5), torch.randn(1, 2, 5)
    reset = torch.tensor([[False, False, False, True, False, False, False]])
    y, _ = conv(x, state, reset)
    first, _ = conv(x[:, :3], state)
    second, _ = conv(x[:, 3:], None)
    torch.testing.assert_close(y, torch.cat([first, second], dim=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 4, 8), (1, 1, 2, 16), (3, 40, 1, 32)])
def test_multi_head_norm_normalises_each_head_alike_with_and_without_autograd(shape):
    torch.manual_seed(0)
    heads, head_dim = shape[2:]
    norm = layers.MultiHeadLayerNorm(heads * head_dim, 1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(shape) * 3 + 1
    untouched = x.clone()
    trained = norm(x)
    expected = F.group_norm(x.reshape(-1, heads * head_dim), heads, 1 + norm.weight, eps=1e-5).view(trained.shape)
    torch.testing.assert_close(trained, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), trained, rtol=0, atol=1e-5)
    assert torch.equal(x, untouched)


def test_multi_head_norm_of_a_bf16_model_computes_in_fp32_without_autograd():
    torch.manual_seed(0)
    norm = layers.MultiHeadLayerNorm(64, 1e-5).to(torch.bfloat16)
    x = (torch.randn(2, 9, 4, 16) * 3 + 100).to(torch.bfloat16)  # a large mean: fp32 arithmetic matters
    trained = norm(x)
    with torch.no_grad():
        inferred = norm(x)
    assert inferred.dtype == torch.bfloat16
    torch.testing.assert_close(inferred, trained)


def test_slstm_gate_inputs_are_the_four_headwise_projections():
    """Written gate-major without autograd and stacked with it: the same values either way."""
    model = tiny_model(slstm_layers=(0,))
    layer = model.backbone.blocks[0].xlstm
    x, x_conv = torch.randn(2, 7, 64), torch.randn(2, 7, 64)
    expected = torch.stack([layer.igate(x_conv), layer.fgate(x_conv), layer.zgate(x), layer.ogate(x)], dim=2)
    expected = expected.view(2, 7, 4, layer.num_heads, 64 // layer.num_heads)
    torch.testing.assert_close(layer.gate_preactivations(x, x_conv), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(layer.gate_preactivations(x, x_conv), expected, rtol=0, atol=1e-6)


# --- parity with the official xlstm package ---------------------------------------------------


def _reference_xlstm(slstm_at=(1,), num_blocks=4):
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModel,
        xLSTMLMModelConfig,
    )

    config = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        ),
        context_length=256,
        num_blocks=num_blocks,
        embedding_dim=64,
        slstm_at=list(slstm_at),
        vocab_size=20,
    )
    model = xLSTMLMModel(config)
    model.reset_parameters()
    with torch.no_grad():  # random weights everywhere, zero-initialised parts included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def xlstm_pair():
    torch.manual_seed(1)
    reference = _reference_xlstm()
    return reference, bioxlstm.convert.from_xlstm(reference)


@pytest.mark.parametrize("seq_len", [1, 63, 64, 200])
def test_from_xlstm_matches_reference_logits(xlstm_pair, seq_len):
    reference, model = xlstm_pair
    tokens = torch.randint(0, 20, (2, seq_len))
    with torch.no_grad():
        assert (reference(tokens) - model(tokens).logits).abs().max() <= 1e-4


def test_from_xlstm_matches_reference_gradients(xlstm_pair):
    """The training path (our chunkwise kernel under autograd) differentiates like the reference's
    parallel formulation."""
    reference, model = xlstm_pair
    tokens = torch.randint(0, 20, (2, 80))

    def grads(module, logits_fn):
        module.zero_grad()
        F.cross_entropy(logits_fn(tokens).flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
        return module

    grads(reference, reference)
    grads(model, lambda t: model(t).logits)
    ref_embedding = reference.token_embedding.weight.grad
    our_embedding = model.backbone.embeddings.weight.grad
    assert torch.allclose(ref_embedding, our_embedding, atol=1e-4, rtol=1e-3)
    ref_up = reference.xlstm_block_stack.blocks[0].xlstm.proj_up.weight.grad
    our_up = model.backbone.blocks[0].xlstm.proj_up.weight.grad
    assert torch.allclose(ref_up, our_up, atol=1e-4, rtol=1e-3)


def test_from_xlstm_is_one_to_one(xlstm_pair):
    reference, model = xlstm_pair
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())
    assert [i for i, kind in enumerate(model.config.block_types) if kind == "slstm"] == [1]


# --- recurrent decoding equals the full forward -----------------------------------------------


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_prefill_then_stepwise_decoding_equals_full_forward(variant):
    model = tiny_model(**CAUSAL_VARIANTS[variant])
    tokens = torch.randint(1, 12, (2, 57))
    with torch.no_grad():
        full = model(tokens).logits
        out = model(tokens[:, :40], use_cache=True)  # longer than the chunk: chunkwise prefill
        pieces, cache = [out.logits], out.cache
        for t in range(40, 57):
            out = model(tokens[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.cache
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-4
    assert cache.seen_tokens == 57


def test_cache_passed_under_its_pre_5_24_name_still_continues_the_sequence():
    model = tiny_model(slstm_layers=())
    tokens = torch.randint(1, 12, (2, 20))
    with torch.no_grad():
        full = model(tokens).logits
        cache = model(tokens[:, :15], use_cache=True).cache
        with pytest.warns(FutureWarning, match="cache_params"):
            rest = model(tokens[:, 15:], cache_params=cache).logits
    assert (rest - full[:, 15:]).abs().max() <= 1e-4


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_generate_logits_equal_full_forward(variant):
    model = tiny_model(**CAUSAL_VARIANTS[variant])
    prompt = torch.randint(1, 12, (2, 23))
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    with torch.no_grad():
        full = model(out.sequences).logits
    assert (torch.stack(out.logits, dim=1) - full[:, 22:-1]).abs().max() <= 1e-4


def test_generate_advances_only_its_own_caches_in_place():
    """Decoding writes each step's mLSTM memory into the tensor of the step before instead of a new
    one, but only in caches that generate made itself: a cache passed in is left as it was, so two
    generations from it agree."""
    model = tiny_model(slstm_layers=())
    prompt = torch.randint(1, 12, (2, 30))
    with torch.no_grad():
        context = model(prompt[:, :-1], use_cache=True).cache
    before = [t.clone() for t in context.tensors()]
    memories = []
    model.backbone.blocks[0].register_forward_hook(lambda module, args, output: memories.append(output[1][0].data_ptr()))
    options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    last = dict(input_ids=prompt[:, -1:], attention_mask=torch.ones_like(prompt[:, -1:]), cache=context)
    first = model.generate(**last, **options)
    assert len(memories) == 6 and len(set(memories)) == 1
    assert memories[0] != context.states[0][0].data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(before, context.tensors(), strict=True))
    assert torch.equal(model.generate(**last, **options), first)
    assert torch.equal(first[:, 1:], model.generate(prompt, **options)[:, prompt.shape[1] :])


def test_generate_prefills_the_prompt_in_one_chunkwise_pass(monkeypatch):
    """A prompt longer than the chunk size reaches the mLSTM kernel whole, once per block; only
    the new tokens go through the step kernel one by one."""
    model = tiny_model(slstm_layers=(), chunk_size=16)
    lengths = []
    recurrence = mlstm.mlstm_recurrence

    def spy(q, *args, **kwargs):
        lengths.append(q.shape[2])
        return recurrence(q, *args, **kwargs)

    monkeypatch.setattr(mlstm, "mlstm_recurrence", spy)
    model.generate(torch.randint(1, 12, (1, 100)), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    depth = model.config.num_hidden_layers
    assert lengths == [100] * depth + [1] * (4 * depth)


def _left_padded(sequences, pad_id=0):
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return ids, mask


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_padded_batch_equals_each_prompt_alone(variant):
    model = tiny_model(**CAUSAL_VARIANTS[variant])
    prompts = [torch.randint(1, 12, (n,)) for n in (41, 7, 19)]
    ids, mask = _left_padded(prompts)
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask).logits
        batch_generated = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        for row, prompt in enumerate(prompts):
            alone = model(prompt[None]).logits[0]
            assert (batch_logits[row, -len(prompt) :] - alone).abs().max() <= 1e-4
            generated = model.generate(prompt[None], max_new_tokens=8, do_sample=False)
            assert torch.equal(batch_generated[row, ids.shape[1] :], generated[0, len(prompt) :])


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_inference_in_segments_equals_one_pass(monkeypatch, variant):
    """Without autograd the native backend reads a long input in segments, every state carried
    (kernels.NATIVE_INFERENCE_SEGMENT): logits, hidden states and the returned cache equal those of
    one pass over the whole input, for a left-padded batch with rotary positions and for packed rows."""
    monkeypatch.setattr(kernels, "NATIVE_INFERENCE_SEGMENT", 24)
    model = tiny_model(**{**CAUSAL_VARIANTS[variant], "position_embedding": "rotary", "rope_sequence_index": True})
    ids, mask = _left_padded([torch.randint(1, 12, (n,)) for n in (101, 60)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seq_idx = torch.repeat_interleave(torch.arange(4), torch.tensor([30, 1, 49, 21]))[None].expand(2, -1)
    calls = []
    model.backbone.blocks[0].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[1]))
    for inputs in (
        dict(input_ids=ids, attention_mask=mask, position_ids=positions),
        dict(input_ids=ids, seq_idx=seq_idx),
    ):
        with torch.enable_grad():  # autograd on: one pass
            whole = model(**inputs, use_cache=True, output_hidden_states=True)
        calls.clear()
        with torch.no_grad():
            segmented = model(**inputs, use_cache=True, output_hidden_states=True)
        assert calls == [24, 24, 24, 24, 5]
        assert (whole.logits - segmented.logits).abs().max() <= 1e-4
        for a, b in zip(whole.hidden_states, segmented.hidden_states, strict=True):
            assert (a - b).abs().max() <= 1e-4
        for a, b in zip(whole.cache.tensors(), segmented.cache.tensors(), strict=True):
            assert (a - b).abs().max() <= 1e-4
        assert segmented.cache.seen_tokens == ids.shape[1]


def test_a_batch_is_read_in_segments_of_about_the_same_number_of_rows(monkeypatch):
    """The segments hold about kernels.NATIVE_INFERENCE_ROWS batch x token rows: four sequences
    are read a quarter as many tokens at a time as one, and never fewer than
    kernels.SHORTEST_INFERENCE_SEGMENT tokens at a time."""
    monkeypatch.setattr(kernels, "NATIVE_INFERENCE_ROWS", 256)
    model = tiny_model()
    calls = []
    model.backbone.blocks[0].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[1]))
    segments = {}
    for batch in (1, 4, 64):
        calls.clear()
        with torch.no_grad():
            model(torch.randint(1, 12, (batch, 300)))
        segments[batch] = list(calls)
    assert segments == {1: [256, 44], 4: [64, 64, 64, 64, 44], 64: [64, 64, 64, 64, 44]}


def test_sequences_in_segments_run_several_slstm_blocks_recurrences_as_one_scan(monkeypatch):
    """Unmasked causal inference in segments advances the blocks diagonally (block i on segment g
    beside block i + 1 on segment g - 1) and runs the sLSTM recurrences of one diagonal as one scan:
    logits, hidden states and cache those of block-by-block order, in fewer scans; the last, shorter
    segment's recurrence runs apart from those of full segments."""
    monkeypatch.setattr(kernels, "NATIVE_INFERENCE_ROWS", 128)  # 2 rows: segments of 64 tokens
    model = tiny_model(slstm_layers=(0, 2))  # sLSTM, mLSTM, sLSTM; 2 heads each
    ids = torch.randint(1, 12, (2, 200))  # segments of 64, 64, 64 and 8 tokens
    scans = count_scans(monkeypatch)
    with torch.no_grad():
        diagonal = model(ids, use_cache=True, output_hidden_states=True)
        diagonal_scans = list(scans)
        scans.clear()
        model.backbone.blocks[0].register_forward_hook(lambda *_: None)  # a hook sees every block call
        in_order = model(ids, use_cache=True, output_hidden_states=True)
    # in order, 2 blocks x 4 segments; diagonally, block 0 on segment 2 beside block 2 on segment 0
    assert len(scans) == 8 and len(diagonal_scans) == 7
    assert sorted((shape[1], shape[3]) for shape in diagonal_scans) == [(8, 2), (8, 2), (64, 2), (64, 2), (64, 2), (64, 2), (64, 4)]
    for a, b in zip(
        (diagonal.logits, *diagonal.hidden_states, *diagonal.cache.tensors()),
        (in_order.logits, *in_order.hidden_states, *in_order.cache.tensors()),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_right_padding_does_not_change_real_positions():
    model = tiny_model()
    tokens = torch.randint(1, 12, (1, 30))
    padded = torch.cat([tokens, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 30), torch.zeros(1, 9)], dim=1).long()
    with torch.no_grad():
        assert (model(padded, attention_mask=mask).logits[:, :30] - model(tokens).logits).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="attention_mask covers 30 positions but the input has 39"):
            model(padded, attention_mask=mask[:, :30])


# --- generation features ----------------------------------------------------------------------


def test_sampling_options_and_num_return_sequences():
    model = tiny_model()
    prompt = torch.randint(1, 12, (2, 9))
    torch.manual_seed(3)
    first = model.generate(
        prompt, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, num_return_sequences=3, max_new_tokens=6
    )
    torch.manual_seed(3)
    second = model.generate(
        prompt, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, num_return_sequences=3, max_new_tokens=6
    )
    assert first.shape == (6, 15)
    assert torch.equal(first, second)  # seeded sampling is reproducible
    assert torch.equal(first[0::3, :9], prompt) and torch.equal(first[2::3, :9], prompt)


def test_top_k_one_sampling_is_greedy():
    model = tiny_model()
    prompt = torch.randint(1, 12, (1, 9))
    greedy = model.generate(prompt, do_sample=False, max_new_tokens=10)
    sampled = model.generate(prompt, do_sample=True, top_k=1, max_new_tokens=10)
    assert torch.equal(greedy, sampled)


def test_generation_stops_at_eos():
    model = tiny_model()
    prompt = torch.randint(1, 12, (1, 9))
    greedy = model.generate(prompt, do_sample=False, max_new_tokens=10)
    eos = int(greedy[0, 12])  # the fourth generated token
    first_eos = (greedy[0, 9:] == eos).nonzero()[0].item() + 9
    stopped = model.generate(prompt, do_sample=False, max_new_tokens=10, eos_token_id=eos)
    assert stopped.shape[1] == first_eos + 1
    assert torch.equal(stopped[0], greedy[0, : first_eos + 1])


def test_beam_search_reorders_the_recurrent_state():
    model = tiny_model()
    prompt = torch.randint(1, 12, (1, 9))
    beams = model.generate(prompt, num_beams=3, do_sample=False, max_new_tokens=6, num_return_sequences=3,
                           output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        logprobs = F.log_softmax(model(beams.sequences).logits[:, 8:-1], dim=-1)
    recomputed = logprobs.gather(-1, beams.sequences[:, 9:, None]).sum(dim=(1, 2)) / beams.sequences[:, 9:].shape[1]
    assert torch.allclose(recomputed, beams.sequences_scores, atol=1e-4)


@pytest.mark.slow
def test_cache_has_constant_size_during_long_generation():
    model = tiny_model()
    shapes = []

    def record(module, args, kwargs, output):
        shapes.append([tuple(t.shape) for t in output.cache.tensors()])

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        out = model.generate(torch.randint(1, 12, (1, 30)), do_sample=True, min_new_tokens=2000,
                             max_new_tokens=2000, pad_token_id=None, eos_token_id=None)
    finally:
        handle.remove()
    assert out.shape[1] == 2030
    assert len(shapes) == 2000
    assert all(s == shapes[0] for s in shapes)


@pytest.mark.slow
@pytest.mark.parametrize("segment", [kernels.NATIVE_INFERENCE_SEGMENT, 32768], ids=["in segments", "one pass"])
def test_long_sequence_forward_is_finite(monkeypatch, segment):
    """Also with the whole sequence in one chunkwise call (as on a GPU); that variant is mLSTM-only,
    since the sLSTM scan is the same loop either way."""
    monkeypatch.setattr(kernels, "NATIVE_INFERENCE_SEGMENT", segment)
    monkeypatch.setattr(kernels, "NATIVE_INFERENCE_ROWS", max(segment, kernels.NATIVE_INFERENCE_ROWS))
    model = tiny_model(chunk_size=64, slstm_layers=(1,) if segment < 32768 else ())
    tokens = torch.randint(1, 12, (1, 32768))
    with torch.no_grad():
        logits = model(tokens).logits
    assert torch.isfinite(logits).all()


# --- training and persistence -----------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "swish", "relu"])
def test_every_feed_forward_activation_trains_and_infers_alike(activation):
    """The feed-forward gates in place only without autograd (relu's backward reads its output); the
    multi-head norm normalises in place only without it too, in another order of operations."""
    model = tiny_model(ffn_activation=activation, slstm_layers=(0,))
    tokens = torch.randint(1, 12, (2, 16))
    out = model(tokens, labels=tokens)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, out.logits.detach(), rtol=0, atol=1e-5)


def test_labels_give_shifted_next_token_loss():
    model = tiny_model()
    tokens = torch.randint(1, 12, (2, 20))
    labels = tokens.clone()
    labels[0, :5] = -100
    out = model(tokens, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    tokens = torch.randint(1, 12, (2, 40))

    def gradients():
        model.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.backbone.blocks)
    checkpointed = gradients()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_hidden_states_cover_embeddings_and_every_block():
    model = tiny_model()
    tokens = torch.randint(1, 12, (1, 10))
    with torch.no_grad():
        out = model.backbone(tokens, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[0], model.backbone.embeddings(tokens))
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


def test_return_dict_false_gives_the_fields_that_are_set_in_order():
    model = tiny_model()
    tokens = torch.randint(1, 12, (2, 10))
    with torch.no_grad():
        full = model(tokens, labels=tokens, use_cache=True)
        loss, logits, cache = model(tokens, labels=tokens, use_cache=True, return_dict=False)
        (hidden,) = model.backbone(tokens, return_dict=False)
        # Both under no_grad: with gradients on, fp32 runs another (training) kernel where installed.
        hidden_in_a_dict = model.backbone(tokens).last_hidden_state
    assert torch.equal(loss, full.loss) and torch.equal(logits, full.logits)
    assert isinstance(cache, bioxlstm.BioXLSTMCache)
    assert torch.equal(hidden, hidden_in_a_dict)


def test_block_types_are_stored_and_the_old_slstm_layers_read_as_them(tmp_path):
    model = tiny_model(slstm_layers=(1,))
    assert model.config.block_types == ["mlstm", "slstm", "mlstm"]
    assert [type(block.xlstm).kind for block in model.backbone.blocks] == ["mlstm", "slstm", "mlstm"]
    model.config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_types"] == ["mlstm", "slstm", "mlstm"] and "slstm_layers" not in saved
    same = bioxlstm.BioXLSTMConfig(num_hidden_layers=3, block_types=["mlstm", "slstm", "mlstm"])
    assert same.to_dict()["block_types"] == saved["block_types"]
    with pytest.raises(ValueError, match="block type 'gru'"):
        bioxlstm.BioXLSTMConfig(num_hidden_layers=3, block_types=["mlstm", "gru", "mlstm"])
    with pytest.raises(ValueError, match="disagree"):
        bioxlstm.BioXLSTMConfig(num_hidden_layers=3, block_types=["mlstm", "slstm", "mlstm"], slstm_layers=[2])


@pytest.mark.parametrize("rcps", [False, True])
def test_a_block_with_zero_residual_returns_its_input(rcps):
    settings = dict(rcps=True, complement_map=[0, 1, 2, 3, 4, 5, 9, 8, 7, 6, 10, 11]) if rcps else {}
    model = tiny_model(slstm_layers=(1,), model_class=bioxlstm.BioXLSTMModel, **settings)
    x = torch.randn(2, 9, model.config.hidden_size)
    for block in model.blocks:
        block.zero_residual_()
        with torch.no_grad():
            assert torch.equal(block(x)[0], x)


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(tmp_path, tie):
    model = tiny_model(tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = bioxlstm.BioXLSTMForCausalLM.from_pretrained(tmp_path).eval()
    auto = __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(1, 12, (2, 33))
    with torch.no_grad():
        expected = model(tokens).logits
        assert torch.equal(loaded(tokens).logits, expected)
        assert torch.equal(auto(tokens).logits, expected)
    assert loaded.config.block_types == model.config.block_types == ["mlstm", "slstm", "mlstm"]
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.backbone.embeddings.weight.data_ptr()


@pytest.mark.parametrize("head", ["BioXLSTMForSequenceClassification", "BioXLSTMForTokenClassification"])
def test_a_new_head_on_a_saved_model_starts_from_small_random_weights(tmp_path, head):
    """Fine-tuning starts with `from_pretrained(saved_lm, num_labels=...)`: the backbone is the saved
    one, and the new classifier, which the checkpoint lacks, is initialised (not left as whatever
    memory it was allocated in)."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    classifier = getattr(bioxlstm, head).from_pretrained(tmp_path, num_labels=3)
    assert torch.equal(classifier.backbone.embeddings.weight, model.backbone.embeddings.weight)
    weight, bias = classifier.classifier.weight, classifier.classifier.bias
    assert torch.isfinite(weight).all() and 0 < weight.std() < 0.5
    assert torch.equal(bias, torch.zeros_like(bias))


# --- packed sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS)
def test_packed_sequences_see_nothing_of_each_other(variant):
    """Sequences packed into one row (seq_idx from transformers' flattening collator) give the
    logits they give alone, and the packed loss is the token-weighted mean of their losses."""
    from transformers import DataCollatorWithFlattening

    tokenizer = bioxlstm.load_tokenizer("protein")
    proteins = [r.sequence[:n] for r, n in zip(bioxlstm.io.read_records(GLOBINS, domain="protein"), (37, 70, 23))]
    model = tiny_model(**CAUSAL_VARIANTS[variant], vocab_size=len(tokenizer), chunk_size=16)
    features = [{"input_ids": tokenizer(p)["input_ids"]} for p in proteins]
    packed = DataCollatorWithFlattening(return_seq_idx=True)(features, return_tensors="pt")
    with torch.no_grad():
        out = model(packed["input_ids"], labels=packed["labels"], seq_idx=packed["seq_idx"])
        start, losses, counts = 0, [], []
        for feature in features:
            ids = torch.tensor([feature["input_ids"]])
            alone = model(ids, labels=ids)
            assert (out.logits[0, start : start + ids.shape[1]] - alone.logits[0]).abs().max() <= 1e-4
            losses.append(alone.loss * (ids.shape[1] - 1))
            counts.append(ids.shape[1] - 1)
            start += ids.shape[1]
    assert torch.allclose(out.loss, sum(losses) / sum(counts), atol=1e-5)
