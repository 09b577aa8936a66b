"""A new mixer lands in one place: a mixer defined and registered in this file alone builds into a
model, trains, decodes token by token, pads, packs and exports like the built-in mLSTM and sLSTM.
And every config we ever saved (bundled models, exports, converted checkpoints) still loads, with
its blocks read as `block_types`."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers import initialization as init

import bioxlstm
from bioxlstm.export import export
from bioxlstm.models import MIXERS, Mixer, register_mixer
from bioxlstm.models.layers import mask_padding
from bioxlstm.tokenization import load_tokenizer

SAVED_CONFIGS = sorted((Path(__file__).parent / "fixtures" / "saved_configs").glob("*.json"))
HEADS = {
    "BioXLSTMForCausalLM": bioxlstm.BioXLSTMForCausalLM,
    "BioXLSTMForMaskedLM": bioxlstm.BioXLSTMForMaskedLM,
}


@dataclass(frozen=True)
class DecayingAverageSettings:
    average_decay: float = 0.9


class DecayingAverage(Mixer):
    """A toy recurrent mixer: a per-channel exponential moving average of a projection of its input,
    y_t = decay * y_(t-1) + (1 - decay) * W x_t, whose state is y_(t-1)."""

    kind = "decaying_average"
    display_name = "DecayingAverage"
    settings = DecayingAverageSettings

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.decay = config.average_decay
        self.proj = nn.Linear(config.block_width, config.block_width, bias=False)

    def forward(self, x, state, keep, reset=None, rotary=None, overwrite_state=False, rc_rows=None):
        inputs = mask_padding(self.proj(x), keep)
        running = x.new_zeros(x.shape[0], x.shape[2]) if state is None else state
        outputs = []
        for t in range(x.shape[1]):
            if reset is not None:
                running = torch.where(reset[:, t, None], torch.zeros_like(running), running)
            updated = self.decay * running + (1 - self.decay) * inputs[:, t]
            running = updated if keep is None else torch.where(keep[:, t, None], updated, running)
            outputs.append(running)
        return torch.stack(outputs, dim=1), running

    def init_parameters(self) -> None:
        init.normal_(self.proj.weight, std=0.1)

    @torch.no_grad()
    def zero_output_(self) -> None:
        self.proj.weight.zero_()


@pytest.fixture
def toy_mixer():
    register_mixer(DecayingAverage)
    yield DecayingAverage
    MIXERS.pop(DecayingAverage.kind)


def toy_model(model_class=bioxlstm.BioXLSTMForCausalLM, **settings):
    torch.manual_seed(0)
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=12, hidden_size=32, num_hidden_layers=3, num_heads=2, chunk_size=8, pad_token_id=0,
        block_types=["mlstm", "decaying_average", "slstm"], average_decay=0.8, **settings,
    )
    return model_class(config).eval()


def test_a_registered_mixer_is_a_block_type_with_its_settings_stored(toy_mixer, tmp_path):
    model = toy_model()
    assert isinstance(model.backbone.blocks[1].xlstm, DecayingAverage)
    assert model.backbone.blocks[1].xlstm.decay == 0.8
    assert model.config.block_names == ["mLSTM", "DecayingAverage", "sLSTM"]
    model.config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_types"] == ["mlstm", "decaying_average", "slstm"] and saved["average_decay"] == 0.8
    assert bioxlstm.BioXLSTMConfig.field_types()["average_decay"] is float  # so recipes accept and check it


def test_a_mixer_cannot_take_another_mixers_or_the_shared_fields(toy_mixer):
    @dataclass(frozen=True)
    class ClashingSettings:
        chunk_size: int = 3

    class Clashing(DecayingAverage):
        kind = "clashing"
        settings = ClashingSettings

    with pytest.raises(ValueError, match="chunk_size"):
        register_mixer(Clashing)

    @dataclass(frozen=True)
    class ShadowingSettings:
        hidden_size: int = 3

    class Shadowing(DecayingAverage):
        kind = "shadowing"
        settings = ShadowingSettings

    register_mixer(Shadowing)
    try:
        with pytest.raises(ValueError, match="hidden_size"):
            bioxlstm.BioXLSTMConfig()
    finally:
        MIXERS.pop("shadowing")


def test_the_model_with_a_new_mixer_trains(toy_mixer):
    model = toy_model().train()
    ids = torch.randint(1, 12, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.backbone.blocks[1].xlstm.proj.weight.detach().clone()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert model.backbone.blocks[1].xlstm.proj.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert not torch.equal(before, model.backbone.blocks[1].xlstm.proj.weight)
    assert losses[-1] < losses[0]


def test_step_decoding_padding_and_packing_agree_with_the_whole_sequence(toy_mixer):
    model = toy_model()
    ids = torch.randint(1, 12, (2, 13))
    with torch.no_grad():
        whole = model(ids).logits
        out = model(ids[:, :7], use_cache=True)
        steps = [out.logits]
        for t in range(7, 13):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
        assert (torch.cat(steps, dim=1) - whole).abs().max() < 1e-5
        padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
        mask = (padded != 0).long()
        mask[:, :3] = 0
        assert (model(padded, attention_mask=mask).logits[:, 3:] - whole).abs().max() < 1e-5
        packed = torch.cat([ids[0, :5], ids[1]])[None]
        seq_idx = torch.tensor([[0] * 5 + [1] * 13])
        assert (model(packed, seq_idx=seq_idx).logits[0, 5:] - whole[1]).abs().max() < 1e-5
        greedy = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
        assert greedy.shape == (2, 10)


def test_a_model_with_a_new_mixer_exports_and_loads_with_its_outputs(toy_mixer, tmp_path):
    model = toy_model()
    directory = export(model, tmp_path / "toy", load_tokenizer("dna"))
    card = (directory / "README.md").read_text()
    assert "DecayingAverage" in card
    loaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.randint(1, 12, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_grown_block_of_the_new_mixer_starts_silent(toy_mixer):
    model = toy_model(model_class=bioxlstm.BioXLSTMModel)
    x = torch.randn(2, 7, 32)
    block = model.blocks[1]
    block.zero_residual_()
    with torch.no_grad():
        assert torch.equal(block(x)[0], x)


@pytest.mark.parametrize("path", SAVED_CONFIGS, ids=lambda path: path.stem)
def test_every_config_we_ever_saved_loads_with_its_blocks_as_block_types(path, tmp_path):
    saved = json.loads(path.read_text())
    config = bioxlstm.BioXLSTMConfig.from_dict(saved)
    if "slstm_layers" in saved:
        slstm = saved["slstm_layers"]
        assert config.block_types == ["slstm" if i in slstm else "mlstm" for i in range(saved["num_hidden_layers"])]
    for name in saved.keys() & (bioxlstm.BioXLSTMConfig.field_names() - {"slstm_layers"}):
        assert getattr(config, name) == saved[name], name
    model = HEADS[saved["architectures"][0]](config)
    model.save_pretrained(tmp_path)
    rewritten = json.loads((tmp_path / "config.json").read_text())
    assert rewritten["block_types"] == config.block_types and "slstm_layers" not in rewritten
    assert bioxlstm.BioXLSTMConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    # An RC-PS model wraps each block (rc.ReverseComplementShared).
    blocks = [getattr(block, "block", block) for block in model.base_model.blocks]
    assert [type(block.xlstm).kind for block in blocks] == config.block_types
