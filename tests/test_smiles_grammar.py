"""The SMILES grammar (`bioxlstm.tasks.smiles_grammar`): what it lets a model write is SMILES that
RDKit reads, it never forbids a real molecule, and it fits into `generate`, beam search and the
`text-generation` pipeline without changing how sampling works."""

import csv
import gzip
import json
import random
from pathlib import Path

import pytest
import torch
from rdkit import Chem, rdBase
from transformers import LogitsProcessorList, pipeline

import bioxlstm
from bioxlstm.chem import INVALID_KINDS, invalid_counts, invalid_kind, is_valid
from bioxlstm.tasks.generate import generate_sequences
from bioxlstm.tasks.smiles_grammar import SmilesGrammar, SmilesState

ROOT = Path(__file__).resolve().parent.parent
MOSES_TEST = ROOT / "data" / "moses" / "test.csv.gz"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return bioxlstm.load_tokenizer("smiles")


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
    return SmilesGrammar(tokenizer).vocab


@pytest.fixture(scope="module")
def untrained(tokenizer):
    torch.manual_seed(0)
    config = bioxlstm.BioXLSTMConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_heads=2, slstm_layers=[1],
        chunk_size=16, pad_token_id=tokenizer.pad_token_id, kernel="native", domain="smiles",
    )  # fmt: skip
    return bioxlstm.BioXLSTMForCausalLM(config).eval()


def read(vocabulary, tokenizer, smiles: str) -> SmilesState:
    state = SmilesState(vocabulary)
    for token in tokenizer(smiles, add_special_tokens=False)["input_ids"]:
        state.advance(token)
    return state


def allowed_tokens(state: SmilesState, vocabulary) -> set[str]:
    return {vocabulary.text[i] for i in state.allowed_mask().nonzero().flatten().tolist()}


def parses(smiles: str) -> bool:
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles, sanitize=False) is not None


# --- property: what may end is SMILES ----------------------------------------------------------


def random_walk(vocabulary, rng: random.Random, longest: int = 30) -> str | None:
    """A uniformly random path through the grammar, steered to close its branches and rings (as the
    sampler steers a row that is to end) once past `longest` tokens; the string when the grammar let
    it end, None when it ran past `longest + 40` tokens."""
    state, tokens = SmilesState(vocabulary), []
    while len(tokens) < longest + 40:
        mask = state.allowed_mask()
        allowed = mask.nonzero().flatten().tolist()
        can_end = any(token in vocabulary.ends for token in allowed)
        going_on = [t for t in allowed if t not in vocabulary.ends and t != vocabulary.dot]
        if can_end and (not going_on or rng.random() < 0.1 or len(tokens) > longest):
            return "".join(vocabulary.text[t] for t in tokens)
        if len(tokens) > longest:
            preference = torch.tensor([rng.random() for _ in range(vocabulary.size)])
            going_on = state.steered_to_the_end(mask, preference).nonzero().flatten().tolist()
        token = rng.choice(going_on)
        state.advance(token)
        tokens.append(token)
    return None


def test_every_string_the_grammar_lets_end_is_smiles_that_rdkit_reads(vocabulary):
    rng = random.Random(0)
    walks = [random_walk(vocabulary, rng) for _ in range(2000)]
    ended = [smiles for smiles in walks if smiles is not None]
    assert len(ended) >= 1500  # the others ran past 70 tokens with something still open
    assert [smiles for smiles in ended if not parses(smiles)] == []


# --- property: the grammar never forbids a real molecule -----------------------------------------


def test_the_grammar_allows_every_molecule_of_the_moses_test_set_token_by_token(vocabulary, tokenizer):
    """3,000 molecules drawn (seed 0) from the shipped MOSES test set, read token by token: each
    token is allowed where it stands and the molecule may end. Molecules with a token that the
    bundled vocabulary lacks (it reads `[H]` as <unk>) are left out, and there must be few."""
    with gzip.open(MOSES_TEST, "rt") as handle:
        molecules = [row["SMILES"] for row in csv.DictReader(handle)]
    sample = random.Random(0).sample(molecules, 3000)
    unknown, refused = 0, []
    for smiles in sample:
        tokens = tokenizer(smiles, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id in tokens:
            unknown += 1
            continue
        state = SmilesState(vocabulary)
        try:
            for token in tokens:
                state.advance(token)
        except ValueError as error:
            refused.append((smiles, str(error)))
            continue
        if not state.can_end():
            refused.append((smiles, "may not end"))
    assert unknown <= 10
    assert refused == []


# --- what the grammar refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "smiles",
    ["CC(C", "C1CC", "CC=", "C(C)C(", "c1ccc", "c1cccn1", "c1ccccc1c"],  # the last: `c` outside a ring
)
def test_a_string_that_cannot_be_a_molecule_may_not_end(vocabulary, tokenizer, smiles):
    assert not read(vocabulary, tokenizer, smiles).can_end()


@pytest.mark.parametrize("smiles", ["CC(C)C", "C1CC1", "c1ccccc1", "c1cc[nH]c1", "Cn1cccc1", "O=c1cccc[nH]1", "CC.O"])
def test_a_molecule_may_end(vocabulary, tokenizer, smiles):
    assert read(vocabulary, tokenizer, smiles).can_end()


def test_an_atom_with_a_full_valence_takes_no_further_bond(vocabulary, tokenizer):
    full = allowed_tokens(read(vocabulary, tokenizer, "CC(C)(C)(C)"), vocabulary)  # the second C: four bonds
    assert not full & {"C", "O", "(", "=", "1", "c"}
    assert "<eos>" in full
    assert "O" not in allowed_tokens(read(vocabulary, tokenizer, "CC#"), vocabulary)  # O takes two bonds
    assert "N" in allowed_tokens(read(vocabulary, tokenizer, "CC#"), vocabulary)


def test_a_pyrrole_nitrogen_without_hydrogen_must_take_a_substituent(vocabulary, tokenizer):
    """`c1cccn1` cannot be kekulized; `c1cccn1C` can: the grammar lets the substituent come and
    refuses the end."""
    state = read(vocabulary, tokenizer, "c1cccn1")
    allowed = allowed_tokens(state, vocabulary)
    assert "<eos>" not in allowed and "." not in allowed
    assert {"C", "("} <= allowed


def test_a_ring_closure_that_leaves_an_aromatic_ring_without_a_kekule_form_is_refused(vocabulary, tokenizer):
    # the opening carbon would sit between two NH, with no neighbour left to share a double bond with
    assert "1" not in allowed_tokens(read(vocabulary, tokenizer, "c1cc[nH]cc[nH]"), vocabulary)
    assert "1" in allowed_tokens(read(vocabulary, tokenizer, "c1c[nH]cn"), vocabulary)  # imidazole
    # the closing carbon could still take an exocyclic double bond: closing is allowed, ending is not
    five = read(vocabulary, tokenizer, "Cc1cccc1")
    assert not five.can_end()
    assert "=" in allowed_tokens(five, vocabulary)  # Cc1cccc1=O is a molecule


def test_a_token_that_nothing_could_follow_is_refused_before_it_is_written(vocabulary, tokenizer):
    # a carbon between two NH could never get its double bond, whatever came next
    after_carbon = allowed_tokens(read(vocabulary, tokenizer, "c1c[nH]c"), vocabulary)
    assert "[nH]" not in after_carbon and "n" in after_carbon
    # the last nitrogen owes the carbon before it its double bond: a substituent (`-`) would leave
    # no atom to write after the bond, so only the end remains
    assert allowed_tokens(read(vocabulary, tokenizer, "O=C(O)c1sc(=O)c2cc(Cl)ccc2n1"), vocabulary) == {"<eos>", "."}


def test_an_aromatic_atom_must_be_able_to_close_a_ring_around_itself(vocabulary, tokenizer):
    # [nH] and o take two bonds: after a chain atom, one ring bond is left, and a ring needs two
    after_chain = allowed_tokens(read(vocabulary, tokenizer, "CC"), vocabulary)
    assert not after_chain & {"[nH]", "o"} and {"c", "n"} <= after_chain
    assert {"[nH]", "o"} <= allowed_tokens(read(vocabulary, tokenizer, "Cc1cc"), vocabulary)


@pytest.mark.parametrize(
    "smiles, molecule", [("c1ccccc1c1ccccc1", True), ("c1ccc(c2ccccc2)cc1", True), ("c1(cccc2ccccc2)ccccc1", False)]
)
def test_an_aromatic_bond_in_no_ring_is_single_as_rdkit_reads_it(vocabulary, tokenizer, smiles, molecule):
    """A bond without a symbol between aromatic atoms is aromatic only within a ring: RDKit reads the
    bond that joins two rings as single, and aromatic atoms on a chain outside the rings as an error."""
    assert read(vocabulary, tokenizer, smiles).can_end() == molecule == is_valid(smiles)
    # a ring of five carbons gets its third double bond only from a neighbour outside it: never
    # from the next ring, as the bond to it is single
    assert "c" not in allowed_tokens(read(vocabulary, tokenizer, "c1cccc1"), vocabulary)


def test_a_row_steered_to_its_end_closes_what_is_open_or_writes_what_lets_it_close(vocabulary, tokenizer):
    ring_open = read(vocabulary, tokenizer, "c1ccccc")
    steered = ring_open.steered_to_the_end(ring_open.allowed_mask(), torch.zeros(vocabulary.size))
    assert {vocabulary.text[i] for i in steered.nonzero().flatten().tolist()} == {"1"}
    branch_open = read(vocabulary, tokenizer, "CC(")  # `)` may not come yet
    preference = torch.full((vocabulary.size,), float("-inf"))
    for token, score in {"(": 5.0, "C": 2.0, "N": 1.0}.items():
        preference[vocabulary.text.index(token)] = score
    steered = branch_open.steered_to_the_end(branch_open.allowed_mask(), preference)
    # `(` would open more, and a token the model gives no chance stays out
    assert {vocabulary.text[i] for i in steered.nonzero().flatten().tolist()} == {"C", "N"}


def test_a_steered_row_that_nothing_brings_nearer_its_end_is_released(vocabulary, tokenizer):
    """After `Cc1` no single token lets the ring close or the molecule end: held to what opens
    nothing, a row can only lengthen a chain (in a branch of aromatic atoms, up to max_new_tokens).
    It stops finishing and may write anything the grammar allows, until its model wants to end again."""
    state = read(vocabulary, tokenizer, "Cc1")
    state.finishing = True
    allowed = state.allowed_mask()
    steered = state.steered_to_the_end(allowed, torch.where(allowed, 0.0, float("-inf")))
    assert torch.equal(steered, allowed) and not state.finishing


def test_brackets_branches_and_ring_labels_follow_smiles_syntax(vocabulary, tokenizer):
    start = allowed_tokens(SmilesState(vocabulary), vocabulary)
    assert "C" in start and "[nH]" in start and not start & {"(", ")", "1", "=", "<eos>", "."}
    after_branch = allowed_tokens(read(vocabulary, tokenizer, "CC("), vocabulary)
    assert "=" in after_branch and not after_branch & {")", "1", "<eos>"}
    assert "1" not in allowed_tokens(read(vocabulary, tokenizer, "CC(="), vocabulary)  # RDKit reads no `(=1`
    assert "1" not in allowed_tokens(read(vocabulary, tokenizer, "CC1"), vocabulary)  # C1 bonded twice to itself
    assert "1" not in allowed_tokens(read(vocabulary, tokenizer, "CC1C"), vocabulary)  # a second bond to C


def test_special_tokens_and_the_separator_start_a_new_molecule(vocabulary, tokenizer):
    state = read(vocabulary, tokenizer, "CCO.")
    assert allowed_tokens(state, vocabulary) == allowed_tokens(SmilesState(vocabulary), vocabulary)
    state.advance(tokenizer.pad_token_id)
    assert state.current == -1


# --- the logits processor in generate, beam search and the pipeline ------------------------------


def test_the_processor_sets_every_token_the_grammar_refuses_to_minus_infinity(tokenizer):
    grammar = SmilesGrammar(tokenizer)
    ids = torch.tensor([[tokenizer.cls_token_id], [tokenizer.pad_token_id]])
    scores = grammar(ids, torch.zeros(2, len(tokenizer)))
    first_atoms = {tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(scores[0]).nonzero().flatten().tolist()}
    assert "C" in first_atoms and not first_atoms & {"(", ")", "1", "=", "<eos>", "<pad>"}
    assert torch.equal(torch.isfinite(scores[0]), torch.isfinite(scores[1]))


def test_the_processor_masks_each_row_as_a_state_reading_it_afresh_would(vocabulary, tokenizer):
    """Rows that keep their place from step to step (sampling) and rows reordered and repeated (beam
    search) get the mask of a state that reads the row from its start: the processor's own
    bookkeeping (rows followed by their tokens, masks cached) changes nothing."""
    rng = random.Random(1)
    grammar = SmilesGrammar(tokenizer)
    rows = [[tokenizer.cls_token_id] for _ in range(6)]
    compared = 0
    for step in range(40):
        if step in (15, 30):
            rows = [rows[i] for i in (3, 0, 0, 5, 1, 2)]
        scores = torch.randn(len(rows), len(tokenizer))
        scores[:, vocabulary.ends] = float("-inf")  # no row wants to end: none is steered
        allowed = torch.isfinite(grammar(torch.tensor(rows), scores))
        for row, mask in zip(rows, allowed):
            fresh = SmilesGrammar(tokenizer).start(row)
            expected = fresh.allowed_mask().clone()
            expected[vocabulary.ends] = False
            if not fresh.finishing:  # a row at a dead end is steered, and so not masked by its state alone
                assert torch.equal(mask[: vocabulary.size], expected), tokenizer.decode(row)
                compared += 1
        rows = [row + [rng.choice(mask.nonzero().flatten().tolist())] for row, mask in zip(rows, allowed)]
    assert compared > 200


def test_a_prompt_the_grammar_cannot_continue_is_refused_before_sampling(untrained, tokenizer):
    with pytest.raises(ValueError, match="grammar cannot read the prompt at token"):
        generate_sequences(untrained, tokenizer, 2, prompt="CC)", max_new_tokens=5)
    assert len(generate_sequences(untrained, tokenizer, 2, prompt="CC)", max_new_tokens=5, grammar=False)) == 2


def test_an_untrained_model_writes_smiles_under_the_grammar_and_sampling_stays_seeded(untrained, tokenizer):
    with_grammar = generate_sequences(untrained, tokenizer, 12, max_new_tokens=60, seed=3, batch_size=6)
    again = generate_sequences(untrained, tokenizer, 12, max_new_tokens=60, seed=3, batch_size=6)
    assert [s.sequence for s in with_grammar] == [s.sequence for s in again]
    finished = [s.sequence for s in with_grammar if s.finished]
    assert finished and all(parses(smiles) for smiles in finished)
    without = generate_sequences(untrained, tokenizer, 12, max_new_tokens=60, seed=3, batch_size=6, grammar=False)
    assert sum(parses(s.sequence) for s in without if s.finished) < len(finished)


def test_beam_search_follows_each_beam_through_the_grammar(untrained, tokenizer):
    prompt = torch.tensor([[tokenizer.cls_token_id] + tokenizer("c1ccccc1", add_special_tokens=False)["input_ids"]])
    out = untrained.generate(
        prompt, attention_mask=torch.ones_like(prompt), num_beams=4, num_return_sequences=4, do_sample=False,
        max_new_tokens=30, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([SmilesGrammar(tokenizer)]),
    )  # fmt: skip
    for row in out.tolist():
        body = row[prompt.shape[1] :]
        if tokenizer.eos_token_id in body:
            smiles = tokenizer.decode(row[: prompt.shape[1] + body.index(tokenizer.eos_token_id)], skip_special_tokens=True)
            assert parses(smiles), smiles
        else:  # cut by max_new_tokens: still a prefix the grammar can read
            SmilesGrammar(tokenizer).start(row)


def test_the_text_generation_pipeline_takes_the_grammar_with_padded_prompts(untrained, tokenizer):
    tokenizer.padding_side = "left"
    generator = pipeline("text-generation", model=untrained, tokenizer=tokenizer)
    outputs = generator(
        ["CC", "c1ccccc1O"], batch_size=2, max_new_tokens=40, do_sample=True, return_full_text=True,
        logits_processor=LogitsProcessorList([SmilesGrammar(tokenizer)]), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    for prompt, output in zip(["CC", "c1ccccc1O"], outputs):
        text = output[0]["generated_text"].replace(" ", "")
        assert text.startswith(prompt)
        grammar = SmilesGrammar(tokenizer)
        grammar.start(tokenizer(text, add_special_tokens=False)["input_ids"])  # every token was allowed


# --- invalid samples, by kind ------------------------------------------------------------------


@pytest.mark.parametrize(
    "smiles, kind",
    [("CCO", None), ("CC(", "syntax"), ("C1CC", "syntax"), ("", "syntax"), ("c1cccc1", "kekulization"),
     ("c1cccn1", "kekulization"), ("CC(C)(C)(C)C", "valence"), ("O=O=O", "valence")],
)  # fmt: skip
def test_an_invalid_sample_is_counted_by_why_rdkit_refuses_it(smiles, kind):
    assert invalid_kind(smiles) == kind
    assert is_valid(smiles) == (kind is None)


def test_invalid_counts_name_every_kind():
    assert invalid_counts(["CCO", "CC(", "c1cccc1", "c1cccc1"]) == dict(zip(INVALID_KINDS, [1, 2, 0, 0]))


# --- the bundled chem model --------------------------------------------------------------------


def test_the_bundled_chem_model_samples_valid_molecules_under_the_grammar():
    """A quick check (32 samples); the 1,000-sample numbers are in the README's chem section."""
    model, tokenizer = bioxlstm.pretrained.load_pretrained("chem")
    samples = generate_sequences(model, tokenizer, 32, max_new_tokens=128, seed=0, batch_size=32)
    assert sum(is_valid(s.sequence) for s in samples) >= 28  # 4 of these 32 seeds derail the model itself


def test_evaluate_chem_shows_constrained_and_own_samples_side_by_side(tmp_path, capsys):
    from bioxlstm.cli import main

    with gzip.open(ROOT / "data" / "chembl31_valid_50k.smi.gz", "rt") as handle:
        chembl = [line.split()[0] for line, _ in zip(handle, range(24))]
    paths = {name: tmp_path / f"{name}.smi" for name in ("constrained", "own", "reference")}
    paths["constrained"].write_text("\n".join(chembl[:4]) + "\n")
    paths["own"].write_text("\n".join(chembl[:1] + ["CC(", "c1cccc1", "CC(C)(C)(C)(C)C"]) + "\n")
    paths["reference"].write_text("\n".join(chembl[4:]) + "\n")
    arguments = ["evaluate", "chem", "--generated", str(paths["constrained"]), "--unconstrained", str(paths["own"]),
                 "--reference", str(paths["reference"])]  # fmt: skip
    main(arguments + ["--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["constrained"]["validity"] == 1.0 and result["unconstrained"]["validity"] == 0.25
    assert result["constrained"]["invalid"] == dict.fromkeys(INVALID_KINDS, 0)
    assert result["unconstrained"]["invalid"] == {"syntax": 1, "kekulization": 1, "valence": 1, "other": 0}
    main(arguments)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["constrained", "own"]
    rows = {line[:20].strip(): line[20:].split() for line in table[1:]}
    assert rows["validity"][:2] == ["1.0000", "0.2500"]
    assert rows["invalid kekulization"][:2] == ["0", "1"]


def test_a_tokenizer_that_spells_bracket_atoms_out_gets_no_grammar(untrained):
    """A converted Chem-xLSTM tokenizer writes `[C@@H]` as six tokens: the grammar, which reads
    atom-level tokens, would forbid every bracket atom, so such a model samples without it."""
    from bioxlstm.tasks.smiles_grammar import atom_level, grammar_for

    class CharacterLevel:
        def get_vocab(self):
            return {"[": 0, "C": 1, "]": 2, "@": 3, "H": 4}

    assert not atom_level(CharacterLevel())
    assert grammar_for(untrained, CharacterLevel(), [0]) is None
    with pytest.raises(ValueError, match="spells bracket atoms out"):
        SmilesGrammar(CharacterLevel())
