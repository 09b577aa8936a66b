"""Fine-tuning a DNA sequence classifier with the Hugging Face Trainer on a real task from the
bundled E. coli genome: protein-coding windows versus intergenic windows."""

import numpy as np
import pytest
import torch
import transformers
from helpers import dna_model, ecoli_genome

import bioxlstm

WINDOW = 100
STOP_CODONS = ("TAA", "TAG", "TGA")
BASE_CODES = {base: code for code, base in enumerate("ACGT")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _codons(strand: np.ndarray, frame: int) -> np.ndarray:
    """Codon codes (0..63, or -1 where a base is not A/C/G/T) of one reading frame."""
    count = (len(strand) - frame) // 3
    triplets = strand[frame : frame + 3 * count].reshape(count, 3).astype(np.int64)
    codes = triplets[:, 0] * 16 + triplets[:, 1] * 4 + triplets[:, 2]
    return np.where((triplets < 4).all(axis=1), codes, -1)


def _codon_code(codon: str) -> int:
    return BASE_CODES[codon[0]] * 16 + BASE_CODES[codon[1]] * 4 + BASE_CODES[codon[2]]


def orf_coverage(genome: str, min_length: int) -> np.ndarray:
    """Positions covered by an open reading frame (ATG up to the first in-frame stop, stop
    included) of at least `min_length` nt, on either strand."""
    codes = np.frombuffer(genome.encode(), dtype=np.uint8)
    lookup = np.full(256, 4, dtype=np.int8)
    for base, code in BASE_CODES.items():
        lookup[ord(base)] = code
    forward = lookup[codes]
    reverse = np.where(forward < 4, 3 - forward, 4)[::-1]
    stops = [_codon_code(c) for c in STOP_CODONS]
    covered = np.zeros(len(genome), dtype=bool)
    for strand, orient in ((forward, lambda a: a), (reverse, lambda a: a[::-1])):
        strand_cover = np.zeros(len(genome), dtype=bool)
        for frame in range(3):
            codons = _codons(strand, frame)
            stop_at = np.flatnonzero(np.isin(codons, stops))
            start_codons = np.flatnonzero(codons == _codon_code("ATG"))
            after_previous_stop = np.concatenate([[0], stop_at[:-1] + 1])
            first = np.searchsorted(start_codons, after_previous_stop)
            has_start = first < len(start_codons)
            start_at = start_codons[np.minimum(first, len(start_codons) - 1)]
            long_enough = has_start & (start_at < stop_at) & ((stop_at - start_at + 1) * 3 >= min_length)
            for start, stop in zip(start_at[long_enough], stop_at[long_enough]):
                strand_cover[frame + 3 * start : frame + 3 * stop + 3] = True
        covered |= orient(strand_cover)
    return covered


def coding_and_intergenic_windows(genome: str) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of non-overlapping windows of two classes.

    Coding: windows inside an ORF of at least 900 nt (300 codons) on either strand. In a random
    sequence of E. coli composition an ORF that long is very unlikely (a stop every ~20 codons),
    so in a bacterial genome, which is ~88% coding, nearly all of them are real genes.
    Intergenic: windows covered by no ORF of even 150 nt on either strand, so no gene of 50 or
    more codons can overlap them. Telling the two apart needs what genes look like (composition,
    codon usage, the 3-periodicity), not an artefact of how the windows were made.
    """
    def window_starts(inside: np.ndarray) -> np.ndarray:
        inside_before = np.concatenate([[0], np.cumsum(inside)])
        fully_inside = np.flatnonzero(inside_before[WINDOW:] - inside_before[:-WINDOW] == WINDOW)
        chosen, next_free = [], 0
        for start in fully_inside:
            if start >= next_free:
                chosen.append(start)
                next_free = start + WINDOW
        return np.array(chosen)

    return window_starts(orf_coverage(genome, 900)), window_starts(~orf_coverage(genome, 150))


def _examples(genome, tokenizer, starts, label, rng, count):
    picked = rng.choice(starts, size=count, replace=False)
    return [{**tokenizer(genome[s : s + WINDOW]), "labels": label} for s in picked]


def test_classifier_fine_tuned_with_the_trainer_separates_coding_from_intergenic_windows(tmp_path):
    """Train on windows from the first half of the genome, test on the second half."""
    genome = ecoli_genome()
    tokenizer = bioxlstm.load_tokenizer("dna")
    coding, intergenic = coding_and_intergenic_windows(genome)
    half = len(genome) // 2
    rng = np.random.default_rng(0)
    train, test = [], []
    for label, starts in ((1, coding), (0, intergenic)):
        train += _examples(genome, tokenizer, starts[starts + WINDOW <= half], label, rng, 320)
        test += _examples(genome, tokenizer, starts[starts >= half], label, rng, 150)

    torch.manual_seed(0)
    model = dna_model(
        bioxlstm.BioXLSTMForSequenceClassification, perturb=0.0, hidden_size=32, num_hidden_layers=2,
        bidirectional=True, num_labels=2, pooling="mean", chunk_size=32,
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
        warmup_steps=4, report_to=[], save_strategy="no", logging_strategy="no", seed=0, use_cpu=True, disable_tqdm=True,
    )
    collator = transformers.DataCollatorWithPadding(tokenizer)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.train()

    predictions = trainer.predict(test)
    predicted = predictions.predictions.argmax(-1)
    labels = predictions.label_ids
    accuracy = float((predicted == labels).mean())
    tp, tn = np.sum((predicted == 1) & (labels == 1)), np.sum((predicted == 0) & (labels == 0))
    fp, fn = np.sum((predicted == 1) & (labels == 0)), np.sum((predicted == 0) & (labels == 1))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) or 1.0)
    print(f"held-out windows={len(test)} accuracy={accuracy:.3f} mcc={mcc:.3f}")
    assert len(test) == 300
    assert accuracy > 0.7 and mcc > 0.4
