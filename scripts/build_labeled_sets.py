"""Build the labeled data sets of data/labeled/ from the real data in ../shared/data (or data/).

    python scripts/build_labeled_sets.py [--shared ../shared/data]

Every label comes from an annotation of the source or from a documented computation on it; the
data cards in data_cards/ say which. The output is the same on every run (fixed seeds).

- swissprot_membrane.fasta (+ _labels.csv): Swiss-Prot entries, membrane vs soluble (DeepLoc's
  binary task), from the TRANSMEM / INTRAMEM features and the SUBCELLULAR LOCATION comment.
- swissprot_transmembrane.csv: the same entries, one label per residue, M inside a TRANSMEM or
  INTRAMEM feature and - elsewhere.
- chembl_logp.fasta (+ _labels.csv): ChEMBL molecules with their Wildman-Crippen logP computed by
  RDKit (a computed property, as in MoleculeNet's computed sets).
- ecoli_coding_windows.fasta (+ _labels.csv): 100-nt windows of the E. coli 536 genome, coding
  (inside a long open reading frame) vs intergenic (no open reading frame of 150 nt or more).
"""

import argparse
import gzip
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "data" / "labeled"
MEMBRANE_FEATURES = ("TRANSMEM", "INTRAMEM")
LOGP_MOLECULES = 600
WINDOW, WINDOWS_PER_CLASS = 100, 300
STOP_CODONS = {"TAA", "TAG", "TGA"}
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def swissprot_entries(path: Path):
    from Bio import SwissProt

    with open(path) as handle:
        return list(SwissProt.parse(handle))


def membrane_label(entry) -> str | None:
    """membrane: a membrane-spanning or -inserted segment, or a subcellular location naming a
    membrane (peripheral and anchored membrane proteins too); soluble: a subcellular location
    without a membrane; None: neither annotated."""
    locations = [c for c in entry.comments if c.startswith("SUBCELLULAR LOCATION")]
    in_membrane = any(f.type in MEMBRANE_FEATURES for f in entry.features)
    # Text after "Note=" is free commentary (e.g. where a protein is synthesised), not a location.
    if in_membrane or any("membrane" in c.split("Note=")[0].lower() for c in locations):
        return "membrane"
    return "soluble" if locations else None


def residue_labels(entry) -> str:
    labels = ["-"] * len(entry.sequence)
    for feature in entry.features:
        if feature.type not in MEMBRANE_FEATURES:
            continue
        try:
            start, end = int(feature.location.start), int(feature.location.end)
        except (TypeError, ValueError):  # an unknown end (`?`) marks no residue
            continue
        labels[start:end] = ["M"] * (end - start)
    return "".join(labels)


def write_fasta_and_labels(rows: list[tuple[str, str, str]], name: str) -> None:
    """FASTA with the label in each header (`>id label=...`), and the id,label table probes read."""
    with open(OUTPUT / f"{name}.fasta", "w") as fasta:
        for record_id, sequence, label in rows:
            fasta.write(f">{record_id} label={label}\n{sequence}\n")
    with open(OUTPUT / f"{name}_labels.csv", "w") as table:
        table.write("id,label\n" + "".join(f"{record_id},{label}\n" for record_id, _, label in rows))


def build_swissprot(shared: Path) -> None:
    entries = swissprot_entries(shared / "protein" / "swissprot_100_entries.dat")
    labeled = [(e.entry_name, e.sequence, membrane_label(e)) for e in entries]
    write_fasta_and_labels([row for row in labeled if row[2] is not None], "swissprot_membrane")
    with open(OUTPUT / "swissprot_transmembrane.csv", "w") as table:
        table.write("id,sequence,label\n")
        for entry in entries:
            table.write(f"{entry.entry_name},{entry.sequence},{residue_labels(entry)}\n")


def build_chembl_logp(shared: Path) -> None:
    """The first LOGP_MOLECULES molecules of the ChEMBL validation file (disjoint from the bundled
    chem model's training file) that RDKit parses, with Crippen logP to two decimals."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen

    RDLogger.DisableLog("rdApp.*")
    rows = []
    with gzip.open(shared / "chem" / "chembl31_valid_50k.smi.gz", "rt") as handle:
        for line_number, line in enumerate(handle, start=1):
            molecule = Chem.MolFromSmiles(line.strip())
            if molecule is not None:
                rows.append((f"chembl31_valid_{line_number}", line.strip(), f"{Crippen.MolLogP(molecule):.2f}"))
            if len(rows) == LOGP_MOLECULES:
                break
    write_fasta_and_labels(rows, "chembl_logp")


def orf_coverage(strand: str, min_length: int) -> list[bool]:
    """Positions of `strand` inside an open reading frame (from an ATG to the first in-frame stop,
    stop included) of at least `min_length` nucleotides, in any of the three frames."""
    covered = [False] * len(strand)
    for frame in range(3):
        start = None
        for position in range(frame, len(strand) - 2, 3):
            codon = strand[position : position + 3]
            if start is None and codon == "ATG":
                start = position
            elif start is not None and codon in STOP_CODONS:
                if position + 3 - start >= min_length:
                    covered[start : position + 3] = [True] * (position + 3 - start)
                start = None
    return covered


def build_ecoli_windows(shared: Path) -> None:
    from Bio import SeqIO

    with gzip.open(shared / "dna" / "ecoli_536_NC_008253.fna.gz", "rt") as handle:
        genome = str(next(SeqIO.parse(handle, "fasta")).seq).upper()
    reverse = genome.translate(COMPLEMENT)[::-1]

    def both_strands(min_length: int) -> list[bool]:
        forward, backward = orf_coverage(genome, min_length), orf_coverage(reverse, min_length)[::-1]
        return [a or b for a, b in zip(forward, backward)]

    long_orfs, any_orfs = both_strands(900), both_strands(150)
    windows = {"coding": [], "intergenic": []}
    for start in range(0, len(genome) - WINDOW + 1, WINDOW):
        span = range(start, start + WINDOW)
        if set(genome[start : start + WINDOW]) <= set("ACGT"):
            if all(long_orfs[i] for i in span):
                windows["coding"].append(start)
            elif not any(any_orfs[i] for i in span):
                windows["intergenic"].append(start)
    rng = random.Random(0)
    chosen = sorted((start, label) for label, starts in windows.items() for start in rng.sample(starts, WINDOWS_PER_CLASS))
    # In genome order, so the classes alternate and any leading slice of the file holds both.
    rows = [(f"NC_008253.1_{start + 1}-{start + WINDOW}", genome[start : start + WINDOW], label) for start, label in chosen]
    write_fasta_and_labels(rows, "ecoli_coding_windows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data directory")
    args = parser.parse_args()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    build_swissprot(args.shared)
    build_chembl_logp(args.shared)
    build_ecoli_windows(args.shared)


if __name__ == "__main__":
    main()
