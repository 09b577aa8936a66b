"""Training from recipes: what a user relies on when training or fine-tuning on a CPU or a cluster."""

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_model
from safetensors.torch import load_file
from transformers import TrainerCallback

import bioxlstm
from bioxlstm import BioXLSTMForMaskedLM
from bioxlstm.cli import main
from bioxlstm.data import DataSpec, build_datasets, causal_lm_collator
from bioxlstm.data.protein import sentinel_ids, undo_fill_in_the_middle
from bioxlstm.training import OBJECTIVES, build_trainer, grown_model, load_recipe, starting_model, train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CHEM_TINY = RECIPES / "chem-clm-tiny.yaml"
# A very small model and a slice of the data: enough to see learning in seconds on a shared CPU.
SMALL = [
    "data.max_records=800",
    "data.max_eval_examples=64",
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_heads=2",
    "model.chunk_size=16",
    "training.per_device_train_batch_size=8",
    "training.per_device_eval_batch_size=32",
    "training.learning_rate=5e-3",
    "training.warmup_steps=2",
    "training.report_to=[]",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(tmp_path, *overrides):
    return [*SMALL, f"data.cache_dir={tmp_path / 'cache'}", *overrides]


def test_tiny_recipe_lowers_the_held_out_loss_and_writes_logs_plot_and_model(tmp_path, capsys):
    output = tmp_path / "run"
    main(["train", str(CHEM_TINY), "--output-dir", str(output), *small(
        tmp_path, "training.max_steps=40", "training.eval_on_start=true", "training.eval_steps=20",
        "training.logging_steps=5", "training.save_steps=20", "training.report_to=[tensorboard]",
    )])
    history = json.loads((output / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    eval_losses = [row["eval_loss"] for row in history if "eval_loss" in row]
    assert len(eval_losses) == 3 and eval_losses[2] < eval_losses[1] < eval_losses[0] - 0.5

    log = (output / "log.csv").read_text().splitlines()
    assert {"loss", "eval_loss", "eval_perplexity", "step", "learning_rate", "grad_norm"} <= set(log[0].split(","))
    assert (output / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(output.glob("runs/*/events.out.tfevents.*")), "no TensorBoard events"
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-40"]

    model, tokenizer = bioxlstm.pretrained.load_pretrained(output / "model")
    assert model.config.domain == "smiles" and len(tokenizer) == model.config.vocab_size
    card = (output / "model" / "README.md").read_text()
    metrics = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"][0]["metrics"]
    perplexity = {m["type"]: m["value"] for m in metrics}["eval_perplexity"]
    assert perplexity == pytest.approx(2.718281828 ** eval_losses[-1], rel=1e-4)
    assert "ChEMBL" in card and "40 steps" in card and "![loss curve](loss_curve.png)" in card
    assert (output / "model" / "loss_curve.png").is_file()
    assert "model in" in capsys.readouterr().err


class StopAt(TrainerCallback):
    """Ends training after `step`, as a killed job would after its last checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


# One recipe per objective: masking, FIM spans, homolog and molecule orders are random draws that a
# resumed run must repeat.
@pytest.mark.parametrize("recipe_name", ["chem-clm-tiny", "dna-mlm-rcps-tiny", "protein-fim-icl-tiny", "chem-icl-tiny"])
def test_a_resumed_run_continues_exactly_where_the_interrupted_one_stopped(tmp_path, recipe_name):
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", small(
        tmp_path, "init_from=null", "training.max_steps=8", "training.save_steps=4", "training.logging_steps=1",
        "training.eval_strategy=no", "data.max_length=256", "training.per_device_train_batch_size=2",
    ))
    uninterrupted = train(recipe, tmp_path / "uninterrupted")

    interrupted = build_trainer(recipe, tmp_path / "interrupted")
    interrupted.add_callback(StopAt(4))
    interrupted.train()
    assert interrupted.state.global_step == 4
    resumed = train(recipe, tmp_path / "interrupted", resume=True)

    def losses(trainer):
        return {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}

    assert resumed.state.global_step == 8
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-5)
    for (name, a), b in zip(uninterrupted.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_checkpoint_cut_short_while_written_is_never_resumed_from(tmp_path):
    recipe = load_recipe(CHEM_TINY, small(
        tmp_path, "training.max_steps=4", "training.save_steps=2", "training.eval_strategy=no",
    ))
    trainer = build_trainer(recipe, tmp_path / "run")
    save_rng_state = trainer._save_rng_state
    saves = []

    def crash_on_second_save(output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the job is killed while checkpoint-4 is half written
        save_rng_state(output_dir)

    trainer._save_rng_state = crash_on_second_save
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = train(recipe, tmp_path / "run", resume=True)
    assert resumed.state.global_step == 4


def test_packed_batch_loss_is_the_token_weighted_mean_of_the_sequences_run_alone(tmp_path):
    """Real protein homologs through the data pipeline (windows, ends, homolog groups) and both
    collators: packing and padding give the loss of running every example on its own."""
    tokenizer = bioxlstm.load_tokenizer("protein")
    spec = DataSpec(
        train=[str(ROOT / "data" / "globins45.fa")], max_length=120, homologs_in_context=True,
        eval_fraction=0.2, cache_dir=str(tmp_path / "cache"),
    )
    train_set, _ = build_datasets(spec, tokenizer, "protein")
    examples = [train_set[i] for i in range(6)]
    assert len({len(e["input_ids"]) for e in examples}) > 1
    model = tiny_model(vocab_size=len(tokenizer), chunk_size=16, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        total, predicted = 0.0, 0
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            predicted += ids.shape[1] - 1
        for packing in (True, False):
            batch = causal_lm_collator(tokenizer, packing)(examples)
            assert ("seq_idx" in batch) == packing
            assert model(**batch).loss.item() == pytest.approx(total / predicted, rel=1e-4)


def test_the_trainer_hands_the_packing_boundaries_to_the_model(tmp_path):
    trainer = build_trainer(load_recipe(CHEM_TINY, small(tmp_path)), tmp_path / "run")
    batch = next(iter(trainer.get_train_dataloader()))
    received = []
    forward = trainer.model.forward

    def recording_forward(**inputs):
        received.append(inputs)
        return forward(**inputs)

    trainer.model.forward = recording_forward
    trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    starts = received[0]["seq_idx"].diff(dim=1).ne(0).sum().item()
    assert starts == trainer.args.per_device_train_batch_size - 1  # one row, eight molecules


def test_masked_lm_recipe_trains_a_bidirectional_rc_equivariant_model_on_bert_style_batches(tmp_path):
    trainer = build_trainer(
        load_recipe(RECIPES / "dna-mlm-rcps-tiny.yaml", small(tmp_path, "data.max_length=200")), tmp_path / "run"
    )
    model, tokenizer = trainer.model, trainer.processing_class
    assert isinstance(model, bioxlstm.BioXLSTMForMaskedLM)
    assert model.config.bidirectional and model.config.rcps
    assert model.config.complement_map == bioxlstm.complement_map(tokenizer)
    torch.manual_seed(0)
    batches = [batch for batch, _ in zip(trainer.get_train_dataloader(), range(8))]
    selected = torch.cat([(b["labels"] != -100).flatten() for b in batches])
    bases = torch.cat([torch.isin(b["labels"].where(b["labels"] != -100, b["input_ids"]),
                                  torch.tensor(tokenizer.convert_tokens_to_ids(list("ACGTN")))).flatten()
                       for b in batches])
    assert not (selected & ~bases).any()  # <cls>, <eos> and padding are never masked
    assert selected.sum() / bases.sum() == pytest.approx(0.15, abs=0.02)
    masked = torch.cat([(b["input_ids"] == tokenizer.mask_token_id)[b["labels"] != -100] for b in batches])
    assert masked.float().mean() == pytest.approx(0.8, abs=0.05)
    batch = trainer._prepare_inputs(batches[0])
    assert torch.isfinite(trainer.compute_loss(model, batch))


def test_fim_icl_rows_are_homolog_groups_with_a_member_last_in_fill_in_the_middle_form(tmp_path):
    recipe = load_recipe(RECIPES / "protein-fim-icl-tiny.yaml", small(
        tmp_path, "data.max_length=400", "data.fim_probability=1.0",
    ))
    trainer = build_trainer(recipe, tmp_path / "run")
    tokenizer = trainer.processing_class
    cls_id, eos_id = tokenizer.cls_token_id, tokenizer.eos_token_id
    sentinels = set(sentinel_ids(tokenizer))
    groups = [trainer.train_dataset[i]["input_ids"] for i in range(4)]
    batch = trainer.data_collator([{"input_ids": group} for group in groups])
    assert batch["position_ids"].shape == batch["input_ids"].shape
    for group, ids, positions, mask in zip(groups, batch["input_ids"], batch["position_ids"], batch["attention_mask"]):
        ids, positions = ids[mask.bool()].tolist(), positions[mask.bool()].tolist()
        members = sorted(" ".join(map(str, m)) for m in _split(group[1:], eos_id))
        starts = [i for i, token in enumerate(ids) if token == cls_id]
        assert [positions[i] for i in starts] == [0] * len(starts)  # positions restart at every <cls>
        segments = [ids[a + 1 : b] for a, b in zip(starts, [*starts[1:], len(ids)])]
        *context, query = segments
        assert query[-1] == eos_id and sentinels & set(query)
        assert not any(sentinels & set(segment) for segment in context)
        restored = undo_fill_in_the_middle(query[:-1], sorted(sentinels))
        assert sorted([*(" ".join(map(str, s)) for s in context), " ".join(map(str, restored))]) == members
    assert torch.isfinite(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)))


def _split(ids, separator):
    pieces = [[]]
    for token in ids:
        if token == separator:
            pieces.append([])
        else:
            pieces[-1].append(token)
    return [piece for piece in pieces if piece]


def test_molecule_sets_are_whole_molecules_of_training_domains_shuffled_in_every_batch(tmp_path):
    trainer = build_trainer(
        load_recipe(RECIPES / "chem-icl-tiny.yaml", small(tmp_path, "init_from=null", "data.max_length=300")),
        tmp_path / "run",
    )
    tokenizer = trainer.processing_class
    domains = [r.sequence for r in bioxlstm.io.read_records(ROOT / "data" / "icst_valid_50_domains.txt.gz")]
    molecules_of = [set(domain.split(".")) for domain in domains]
    held_out = load_recipe(RECIPES / "chem-icl-tiny.yaml").data.held_out_records
    trained_domains = [m for number, m in enumerate(molecules_of, start=1) if number not in held_out]
    only_held_out = set().union(*(m for n, m in enumerate(molecules_of, start=1) if n in held_out))
    only_held_out -= set().union(*trained_domains)
    separator = tokenizer.convert_tokens_to_ids(".")
    seen = set()
    for example in trainer.train_dataset["input_ids"]:
        body = [t for t in example[1:] if t != tokenizer.eos_token_id]
        molecules = {tokenizer.decode(m) for m in _split(body, separator)}
        assert molecules and any(molecules <= domain for domain in trained_domains)  # whole molecules of one domain
        seen |= molecules
    assert only_held_out and not seen & only_held_out  # the held-out domains never reach training
    examples = [trainer.train_dataset[i]["input_ids"] for i in range(20)]
    batch = trainer.data_collator([{"input_ids": e} for e in examples])
    orders_changed = 0
    for example, row in zip(examples, batch["input_ids"]):
        row = row[: len(example)].tolist()  # right padding
        assert row[0] == example[0] and row[-1] == example[-1]
        assert sorted(map(tuple, _split(row[1:], separator))) == sorted(map(tuple, _split(example[1:], separator)))
        orders_changed += row != example
    assert orders_changed >= 15
    assert torch.isfinite(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)))


def test_a_recipe_fine_tunes_a_saved_model_when_told_to_start_from_it(tmp_path):
    start, _ = bioxlstm.pretrained.load_pretrained("chem")
    trainer = build_trainer(
        load_recipe(RECIPES / "chem-icl-tiny.yaml", small(tmp_path, "init_from=chem", "model={}")), tmp_path / "run"
    )
    for (name, a), b in zip(start.named_parameters(), trainer.model.parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="init_from protein: a protein model whose vocabulary is not that of the bundled smiles"):
        build_trainer(load_recipe(RECIPES / "chem-icl-tiny.yaml", small(tmp_path, "init_from=protein", "model={}")), tmp_path / "x")


@pytest.mark.parametrize("rcps", [False, True])
def test_a_grown_model_computes_what_it_grew_from_and_its_new_blocks_learn(rcps):
    strands = {"rcps": True, "complement_map": list(range(11, -1, -1)), "model_class": BioXLSTMForMaskedLM}
    start = tiny_model(**(strands if rcps else {}))  # blocks: mLSTM, sLSTM, mLSTM
    layout = [0, 1, 1, "mlstm", 2, 2, "slstm"]
    grown = grown_model(start, layout)
    assert grown.config.block_types == ["mlstm", "slstm", "slstm", "mlstm", "mlstm", "mlstm", "slstm"]
    ids = torch.randint(3, 12, (2, 21))
    with torch.no_grad():
        assert torch.equal(grown(input_ids=ids).logits, start(input_ids=ids).logits)
    grown.train()
    grown(input_ids=ids, labels=ids).loss.backward()
    for index in (2, 3, 5, 6):  # the silenced blocks: their output layers are the first to move
        gradients = [p.grad for name, p in grown.backbone.blocks[index].named_parameters() if "proj_down" in name or "group_norm" in name]
        assert gradients and any(g is not None and g.abs().sum() > 0 for g in gradients), index


def test_a_recipe_grows_the_model_it_starts_from(tmp_path):
    start, tokenizer = bioxlstm.pretrained.load_pretrained("chem")
    grow = ["init_from=chem", "model={}", "init_blocks=[0, 1, slstm, 2, 3, 3]"]
    trainer = build_trainer(load_recipe(CHEM_TINY, small(tmp_path, *grow)), tmp_path / "run")
    assert trainer.model.config.block_types == ["mlstm", "mlstm", "slstm", "mlstm", "mlstm", "mlstm"]
    ids = tokenizer(["CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1"], return_tensors="pt", padding=True)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model(**ids).logits, start(**ids).logits)

    with pytest.raises(ValueError, match="init_blocks names block.s. 4, but init_from chem has 4 blocks .0-3."):
        build_trainer(load_recipe(CHEM_TINY, small(tmp_path, "init_from=chem", "model={}", "init_blocks=[0, 4]")), tmp_path / "x")
    with pytest.raises(ValueError, match="init_blocks rearranges the blocks of a trained model; give init_from too"):
        load_recipe(CHEM_TINY, ["init_blocks=[0, 1]"])
    with pytest.raises(ValueError, match="entries are block indices of init_from .0, 1, .... or mlstm / slstm"):
        load_recipe(CHEM_TINY, ["init_from=chem", "init_blocks=[0, lstm]"])


def test_examples_start_with_cls_and_end_with_eos_only_where_a_sequence_ends(tmp_path):
    tokenizer = bioxlstm.load_tokenizer("protein")
    lengths = [len(r.sequence) for r in bioxlstm.io.read_records(ROOT / "data" / "globins45.fa")]
    spec = DataSpec(train=[str(ROOT / "data" / "globins45.fa")], max_length=100, eval_fraction=0.1,
                    cache_dir=str(tmp_path / "cache"))
    train_set, eval_set = build_datasets(spec, tokenizer, "protein")
    examples = [e["input_ids"] for e in train_set] + [e["input_ids"] for e in eval_set]
    assert all(e[0] == tokenizer.cls_token_id and len(e) <= 100 for e in examples)
    assert sum(e.count(tokenizer.eos_token_id) for e in examples) == len(lengths)
    assert sum(len(e) - 1 for e in examples) == sum(lengths) + len(lengths)  # every residue, once
    assert not {tuple(e) for e in train_set["input_ids"]} & {tuple(e) for e in eval_set["input_ids"]}

    streamed_train, streamed_eval = build_datasets(
        DataSpec(**{**spec.__dict__, "streaming": True}), tokenizer, "protein"
    )
    assert [e["input_ids"] for e in streamed_train] == train_set["input_ids"]
    assert [e["input_ids"] for e in streamed_eval] == eval_set["input_ids"]


def test_dna_training_examples_come_with_their_reverse_complement(tmp_path):
    genome = next(iter(bioxlstm.io.read_records(ROOT / "data" / "ecoli_536_NC_008253.fna.gz")))
    sample = tmp_path / "ecoli_first_2kb.fa"
    sample.write_text(f">ecoli_first_2kb\n{genome.sequence[:2000]}\n")
    tokenizer = bioxlstm.load_tokenizer("dna")
    spec = DataSpec(train=[str(sample)], max_length=101, eval_fraction=0.1, reverse_complement=True,
                    cache_dir=str(tmp_path / "cache"))
    train_set, eval_set = build_datasets(spec, tokenizer, "dna")
    complement = str.maketrans("ACGT", "TGCA")
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in train_set["input_ids"]]
    for forward, reverse in zip(texts[::2], texts[1::2]):
        assert reverse == forward.translate(complement)[::-1]
    assert len(texts) % 2 == 0 and len(eval_set) > 0
    assert all(len(text) == 100 for text in texts[:-2])  # windows of <cls> + 100 bases


def test_smiles_training_molecules_come_with_random_spellings_and_eval_stays_as_written(tmp_path):
    with gzip.open(ROOT / "data" / "chembl31_train_50k.smi.gz", "rt") as handle:
        molecules = [line.strip() for line, _ in zip(handle, range(300))]
    sample = tmp_path / "chembl_300.smi"
    sample.write_text("\n".join(molecules) + "\n")
    tokenizer = bioxlstm.load_tokenizer("smiles")
    plain = DataSpec(train=[str(sample)], max_length=128, eval_fraction=0.1, cache_dir=str(tmp_path / "plain"))
    spelled = DataSpec(**{**plain.__dict__, "smiles_spellings": 3, "cache_dir": str(tmp_path / "spelled")})
    plain_train, plain_eval = build_datasets(plain, tokenizer, "smiles")
    train_set, eval_set = build_datasets(spelled, tokenizer, "smiles")
    assert eval_set["input_ids"] == plain_eval["input_ids"]

    spellings = {}
    for ids in train_set["input_ids"]:
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids[1:-1])
        spellings.setdefault(bioxlstm.chem.canonicalize(text), []).append(text)
    written = [tokenizer.decode(ids[1:-1]) for ids in plain_train["input_ids"]]
    assert set(spellings) == {bioxlstm.chem.canonicalize(text) for text in written}  # same molecules, no others
    assert all(len(set(texts)) == len(texts) <= 4 for texts in spellings.values())
    assert len(train_set) > 3.5 * len(plain_train)  # a molecule with fewer than 3 other spellings is rare

    again, _ = build_datasets(DataSpec(**{**spelled.__dict__, "cache_dir": str(tmp_path / "again")}), tokenizer, "smiles")
    assert again["input_ids"] == train_set["input_ids"]
    with pytest.raises(ValueError, match="data.smiles_spellings needs SMILES data; this recipe's domain is protein"):
        build_datasets(DataSpec(**{**spelled.__dict__, "train": [str(ROOT / "data" / "globins45.fa")]}), bioxlstm.load_tokenizer("protein"), "protein")


def test_two_ddp_processes_end_with_identical_parameters(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys, torch\n"
        "from bioxlstm.training import end_launched_process, load_recipe, train\n"
        "trainer = train(load_recipe(sys.argv[1], sys.argv[3:]), sys.argv[2])\n"
        "parameters = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}\n"
        "wrapper = type(trainer.model_wrapped).__name__\n"
        "torch.save((wrapper, parameters), f'{sys.argv[2]}/rank{trainer.args.process_index}.pt')\n"
        "end_launched_process()\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        str(worker), str(CHEM_TINY), str(tmp_path / "run"),
        *small(tmp_path, "training.max_steps=4", "training.eval_strategy=no", "training.ddp_backend=gloo"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wrapper0, rank0), (wrapper1, rank1) = (torch.load(tmp_path / "run" / f"rank{r}.pt") for r in (0, 1))
    assert wrapper0 == wrapper1 == "DistributedDataParallel"
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    exported = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert torch.equal(exported["backbone.embeddings.weight"], rank0["backbone.embeddings.weight"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([str(CHEM_TINY), "training.max_stepz=3"], "unknown recipe key(s) training.max_stepz"),
        ([str(CHEM_TINY), "model=3"], "section 'model' must be a mapping"),
        ([str(CHEM_TINY), "data.train=[no/such/file.smi]"], "no/such/file.smi: no such file or directory"),
        ([str(CHEM_TINY), "objective=mystery"], "unknown objective 'mystery'; known objectives: clm, fim-icl, mlm, molecule-icl"),
        ([str(CHEM_TINY), "objective=mlm"], "objective 'mlm' trains dna models, not smiles"),
        ([str(RECIPES / "protein-fim-icl-tiny.yaml"), "data.packing=true"], "objective 'fim-icl' needs data.packing: False, got True"),
        ([str(RECIPES / "chem-icl-tiny.yaml"), "data.cut_at=null"], "objective 'molecule-icl' needs data.cut_at: '.', got None"),
        (["no/such/recipe.yaml"], "no/such/recipe.yaml: no such file or directory"),
        ([str(CHEM_TINY), "--resume", "--output-dir", "{tmp}/empty"], "{tmp}/empty: no checkpoint to resume from"),
        ([str(CHEM_TINY), "training.max_steps"], "override 'training.max_steps' is not of the form section.key=value"),
    ],
)
def test_recipe_mistakes_are_one_line_errors(tmp_path, capsys, arguments, message):
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    with pytest.raises(SystemExit) as exit:
        main(["train", *arguments])
    assert exit.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("bioxlstm: error: ") and error.count("\n") == 1, error
    assert message.format(tmp=tmp_path) in error


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_is_complete_and_tiny_ones_fit_a_laptop(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem and recipe.description
    assert recipe.data.cards and all(Path(p).is_file() for p in recipe.data.cards), "cards of its data"
    if path.stem.endswith("-tiny"):  # the full corpora are fetched by users (see their cards)
        assert all(Path(p).is_file() for p in [*recipe.data.train, *recipe.data.eval])
    if path.stem.endswith("-tiny"):
        model = starting_model(recipe, bioxlstm.load_tokenizer(recipe.domain), OBJECTIVES[recipe.objective])
        assert sum(p.numel() for p in model.parameters()) <= 2_500_000
    else:
        assert (RECIPES / f"{path.stem}-tiny.yaml").is_file()


@pytest.mark.parametrize("name, domain", [("dna", "dna"), ("protein", "protein"), ("chem", "smiles"), ("chem-icl", "smiles")])
def test_bundled_default_models_load_by_name_and_report_held_out_numbers(name, domain):
    model, tokenizer = bioxlstm.pretrained.load_pretrained(name)
    assert model.config.domain == domain and len(tokenizer) == model.config.vocab_size
    directory = bioxlstm.pretrained.resolve_model(name)
    assert (directory / "model.safetensors").stat().st_size <= 10 * 2**20
    metadata = yaml.safe_load((directory / "README.md").read_text().split("---")[1])
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert 1 < metrics["eval_perplexity"] < model.config.vocab_size
    if name == "chem":
        assert 0 < metrics["validity_of_1000_samples"] <= 1
    if name == "chem-icl":  # the in-context evaluation on the 5 held-out domains
        assert len([key for key in metrics if key.startswith("fcd_in_context_domain_")]) == 5
    if name == "protein":  # perplexity of never-trained members, alone and with homologs, for 5 families
        assert len([key for key in metrics if key.startswith("held_out_perplexity_in_context_")]) == 5
    prompt = tokenizer("", return_tensors="pt").input_ids
    sampled = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert sampled.shape == (1, 6)


def test_an_unknown_model_name_lists_the_bundled_ones():
    with pytest.raises(bioxlstm.pretrained.ModelNotFoundError, match="bundled default: chem, chem-icl, dna, protein"):
        bioxlstm.pretrained.load_pretrained("rna")
