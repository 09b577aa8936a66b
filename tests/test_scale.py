"""Training beyond one process's memory: packed rows that score as their sequences do alone, FSDP2
sharding that trains what one process trains, LoRA adapters, and per-block activation checkpointing.

The sharded runs use two CPU processes over gloo, so the suite checks them wherever it runs."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from safetensors.torch import load_file

import bioxlstm
from bioxlstm.cli import main
from bioxlstm.data.collators import causal_lm_collator
from bioxlstm.training import build_trainer, load_recipe, train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CHEM_TINY = RECIPES / "chem-clm-tiny.yaml"
SMALL = [
    "data.max_records=200", "data.max_eval_examples=8", "data.max_length=128", "training.report_to=[]",
    "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_heads=2", "model.chunk_size=16",
    "training.logging_steps=1", "training.eval_strategy=no", "training.learning_rate=5e-3", "training.warmup_steps=1",
]
# Two processes over gloo sum the same float32 numbers in another order than one process: after four
# AdamW steps the losses agree to ~1e-7 and the weights to ~6e-7 (measured); these bounds leave 10x.
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(tmp_path, *overrides):
    return [*SMALL, f"data.cache_dir={tmp_path / 'cache'}", *overrides]


def torchrun(*arguments, processes=2, timeout=240) -> subprocess.CompletedProcess:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port),
        *map(str, arguments),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def logged_losses(run: Path) -> dict[int, float]:
    import pandas as pd

    log = pd.read_csv(run / "log.csv")
    return {int(row.step): row.loss for row in log.itertuples() if row.loss == row.loss}


# --- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        # Gates that read rotated q and k, and clamped positions, depend on positions themselves.
        {"rope_gates_read_rotated": True, "max_position_id": 20},
        # Positions restart at every <cls> inside an example (homologs in context).
        {"rope_gates_read_rotated": True, "position_restart_token_id": 1},
    ],
    ids=["rotated-gates-clamped", "restart-token"],
)
def test_a_packed_row_gives_every_sequence_the_logits_it_has_alone_with_rotary_positions(settings):
    model = tiny_model(position_embedding="rotary", slstm_layers=(1,), **settings)
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(2, 12, (length,), generator=generator).tolist() for length in (17, 30, 9)]
    sequences[1][12] = 1  # a restart token inside the second sequence
    batch = causal_lm_collator(None, packing=True)([{"input_ids": ids} for ids in sequences])
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = torch.cat([model(torch.tensor([ids])).logits[0] for ids in sequences])
        straight_through = torch.arange(batch["input_ids"].shape[1])[None]
        numbered_through = model(**batch, position_ids=straight_through).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5), (packed - alone).abs().max()
    # The row numbered straight through, as the collator did before, scores the later sequences otherwise.
    assert not torch.allclose(numbered_through, alone, atol=1e-3)


def test_packing_is_refused_for_2d_rotary_models_that_count_sequences_in_a_row(tmp_path):
    recipe = load_recipe(CHEM_TINY, small(
        tmp_path, "model.position_embedding=rotary", "model.rope_sequence_index=true", "model.hidden_size=64",
    ))
    with pytest.raises(ValueError, match="model.rope_sequence_index numbers the sequences of a row.*set data.packing: false"):
        build_trainer(recipe, tmp_path / "run")


# --- FSDP2 --------------------------------------------------------------------------------------


def test_fsdp_on_two_gloo_processes_trains_what_one_process_trains_and_resumes_from_its_shards(tmp_path):
    """Two processes of 4 examples, sharded per block, against one process of the same 8 examples:
    the same losses and weights; a run resumed from the sharded checkpoint-2 ends where the
    uninterrupted one did; the final model is an ordinary model directory."""
    steps = ["training.max_steps=4", "training.save_steps=2"]
    single = train(load_recipe(CHEM_TINY, small(tmp_path, *steps, "training.per_device_train_batch_size=8")), tmp_path / "single")
    assert single.args.world_size == 1
    sharded = [
        *small(tmp_path, *steps, "training.per_device_train_batch_size=4"), "training.fsdp_config={reshard_after_forward: true}"
    ]
    result = torchrun(ROOT / "cli.py", "train", CHEM_TINY, "--output-dir", tmp_path / "fsdp", *sharded)
    assert "on 2 processes (FSDP2 over gloo)" in result.stderr

    assert logged_losses(tmp_path / "fsdp") == pytest.approx(logged_losses(tmp_path / "single"), rel=LOSS_RTOL)
    alone, together = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("single", "fsdp"))
    assert alone.keys() == together.keys()
    for name in alone:
        assert torch.allclose(alone[name], together[name], atol=WEIGHT_ATOL, rtol=0), name
    # checkpoint-2 holds shards (one file per rank), not a whole state dict
    checkpoint = tmp_path / "fsdp" / "checkpoint-2"
    assert not (checkpoint / "model.safetensors").exists()
    assert len(list((checkpoint / "model_shards").glob("*.distcp"))) == 2
    assert len(list((checkpoint / "optimizer_shards").glob("*.distcp"))) == 2

    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-2")
    torchrun(ROOT / "cli.py", "train", CHEM_TINY, "--output-dir", tmp_path / "resumed", "--resume", *sharded)
    assert logged_losses(tmp_path / "resumed") == logged_losses(tmp_path / "fsdp")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(resumed[name], together[name]) for name in together)

    model, tokenizer = bioxlstm.pretrained.load_pretrained(tmp_path / "fsdp" / "model")
    assert type(model).__name__ == "BioXLSTMForCausalLM" and model.dtype == torch.float32
    assert "2 processes (FSDP2 over gloo)" in (tmp_path / "fsdp" / "model" / "README.md").read_text()
    main(["export", "--model", str(tmp_path / "fsdp" / "model"), "--output", str(tmp_path / "exported")])
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    assert torch.equal(exported["backbone.embeddings.weight"], together["backbone.embeddings.weight"])


MIXED_PRECISION_WORKER = """
import sys, torch
from bioxlstm.training import build_trainer, end_launched_process, load_recipe
from transformers import TrainerCallback

trainer = build_trainer(load_recipe(sys.argv[1], sys.argv[3:]), sys.argv[2])
seen = {}
block = trainer.model.backbone.blocks[0]

def record(module, args):  # a pre-hook that returns something replaces the block's inputs
    seen.setdefault("computed_in", module.xlstm.proj_up.weight.dtype)

block.register_forward_pre_hook(record)

class Grads(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        seen["reduced_in"] = {p.grad.dtype for p in trainer.model.parameters()}
        seen["kept_in"] = {p.dtype for p in trainer.model.parameters()}

trainer.add_callback(Grads())
trainer.train()
if trainer.args.process_index == 0:
    torch.save(seen, sys.argv[2] + "/dtypes.pt")
end_launched_process()
"""


def test_fsdp_mixed_precision_computes_in_bf16_and_reduces_and_keeps_weights_in_float32(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(MIXED_PRECISION_WORKER)
    run = tmp_path / "run"
    run.mkdir()
    torchrun(worker, CHEM_TINY, run, *small(
        tmp_path, "training.max_steps=2", "training.save_strategy=no", "training.per_device_train_batch_size=4",
        "training.fsdp_config={mixed_precision: bf16}",
    ))
    seen = torch.load(run / "dtypes.pt")
    assert seen == {"computed_in": torch.bfloat16, "reduced_in": {torch.float32}, "kept_in": {torch.float32}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.fsdp_config={shard_everything: true}"], "training.fsdp_config: unknown key(s) shard_everything; "
         "Bio-xLSTM's FSDP2 reads reshard_after_forward:"),
        (["training.fsdp_config={mixed_precision: fp8}"],
         "training.fsdp_config.mixed_precision must be one of bf16, no, got 'fp8'"),
        (["training.fsdp_config={mixed_precision: bf16}", "training.bf16=true"],
         "training.fsdp_config.mixed_precision: bf16 already computes in bfloat16 with float32 weights; remove training.bf16"),
        (["training.fsdp_config={}"], "the recipe's training.fsdp_config asks for FSDP, which shards the model over "
         "launched processes, but no launcher started this one; run it under `torchrun --nproc_per_node N` "
         "(N GPUs, or N CPU processes over gloo)"),
        (["--fsdp"], "the recipe's training.fsdp_config asks for FSDP, which shards the model over launched processes, "
         "but no launcher started this one"),
    ],
    ids=["unknown-key", "unknown-precision", "two-precisions", "no-launcher", "cli-flag-no-launcher"],
)
def test_fsdp_settings_a_run_cannot_honour_are_refused_in_one_line(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit:
        main(["train", str(CHEM_TINY), "--output-dir", str(tmp_path / "run"), *small(tmp_path, *overrides)])
    assert exit.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("bioxlstm: error: ") and error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "run").exists()


# --- LoRA ---------------------------------------------------------------------------------------

PROTEIN_CLASSIFY = RECIPES / "protein-classify-tiny.yaml"


def test_a_lora_fine_tune_trains_under_5_percent_of_the_weights_lowers_the_loss_and_saves_adapter_and_merged_model(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    overrides = [
        f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=20", "training.learning_rate=3e-3",
        "lora.r=4", "data.max_length=128",
    ]
    recipe = load_recipe(PROTEIN_CLASSIFY, overrides)
    untrained = build_trainer(recipe, tmp_path / "before")
    # The adapters on proj_up and proj_down of every block, and the new classifier head.
    trainable = sum(p.numel() for p in untrained.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in untrained.model.parameters())
    assert trainable / total < 0.05
    before = untrained.evaluate()["eval_loss"]
    trainer = train(recipe, tmp_path / "run")
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.05, (before, after)

    # The adapter loads onto the model it was trained from, as peft users load adapters.
    adapter = tmp_path / "run" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # The base: the model fine-tuning started from, with the run's head settings (its new head comes from the adapter).
    base = AutoModelForSequenceClassification.from_pretrained(
        bioxlstm.pretrained.resolve_model(recipe.init_from), config=merged.config
    )
    adapted = PeftModel.from_pretrained(base, adapter).eval()
    ids = bioxlstm.load_tokenizer("protein")(["MKTAYIAKQRQISFVKSHFSRQ"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
    assert "LoRA adapters (rank 4, alpha 16)" in (tmp_path / "run" / "model" / "README.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lora.r=4", "init_from=null"], "lora adapts a trained model; give init_from too"),
        (["lora.target_modules=[q_proj]"], "lora.target_modules: q_proj is no projection LoRA can adapt; choose from proj_up"),
        (["lora.rank=4"], "unknown recipe key(s) lora.rank; lora takes"),
    ],
    ids=["no-init-from", "headwise-projection", "unknown-key"],
)
def test_lora_sections_a_run_cannot_honour_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_recipe(PROTEIN_CLASSIFY, overrides)


def test_lora_with_fsdp_is_refused_before_any_work(tmp_path):
    recipe = load_recipe(PROTEIN_CLASSIFY, ["lora.r=4", "training.fsdp_config={}"])
    with pytest.raises(ValueError, match="lora trains small adapters, which FSDP need not shard; remove training.fsdp_config"):
        build_trainer(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- activation checkpointing -------------------------------------------------------------------


def test_activation_checkpointing_recomputes_each_block_in_backward_with_the_same_gradients(tmp_path):
    recipe = load_recipe(CHEM_TINY, small(tmp_path, "training.activation_checkpointing=true", "training.max_steps=1"))
    trainer = build_trainer(recipe, tmp_path / "run")
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()

    def gradients_and_block_calls(checkpointing: bool):
        if checkpointing:
            model.activation_checkpointing_enable(trainer.args.activation_checkpointing_kwargs)
        else:
            model.activation_checkpointing_disable()
        calls = []
        hooks = [block.xlstm.register_forward_pre_hook(lambda *_: calls.append(1)) for block in model.backbone.blocks]
        model.zero_grad()
        torch.manual_seed(0)
        model(**batch).loss.backward()
        for hook in hooks:
            hook.remove()
        return {name: p.grad.clone() for name, p in model.named_parameters()}, len(calls)

    plain, plain_calls = gradients_and_block_calls(False)
    checkpointed, checkpointed_calls = gradients_and_block_calls(True)
    # Each block's layer runs once in the forward pass, and again in backward when checkpointed.
    assert plain_calls == len(model.backbone.blocks) and checkpointed_calls == 2 * plain_calls
    assert all(torch.allclose(plain[name], checkpointed[name], atol=1e-6) for name in plain)
    assert model.backbone.blocks[0].gradient_checkpointing
    trainer.train()
    assert all(block.gradient_checkpointing for block in trainer.model.backbone.blocks)


def test_a_checkpoint_of_an_fsdp_run_is_never_resumed_unsharded(tmp_path, capsys):
    """Shards read as whole weights would leave the model as it was initialised, without a word."""
    run = tmp_path / "run"
    (run / "checkpoint-2" / "model_shards").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit:
        main(["train", str(CHEM_TINY), "--output-dir", str(run), "--resume", *small(tmp_path)])
    assert exit.value.code == 1
    assert "checkpoint-2: a checkpoint of an FSDP2 run (model and optimizer shards); resume it with the recipe's " \
        "training.fsdp_config under torchrun" in capsys.readouterr().err
