"""Regenerates the bundled tokenizer files in `tokenizers/<domain>/`.

The SMILES vocabulary is learned from the bundled ChEMBL training sample and the bundled ICST
domains (the in-context training data, which, unlike the ChEMBL sample, writes stereochemistry and
charged counter-ions), so that the ChEMBL validation sample measures how often unseen tokens occur.
"""

import itertools

from pathlib import Path

from bioxlstm.io import read_records
from bioxlstm.tokenization import build_dna_tokenizer, build_protein_tokenizer, build_smiles_tokenizer

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    chembl = read_records(REPO / "data" / "chembl31_train_50k.smi.gz", domain="smiles")
    icst_domains = read_records(REPO / "data" / "icst_valid_50_domains.txt.gz", domain="smiles")
    smiles_corpus = itertools.chain(
        (record.sequence for record in chembl),
        (molecule for record in icst_domains for molecule in record.sequence.split(".") if molecule),
    )
    tokenizers = {
        "dna": build_dna_tokenizer(),
        "protein": build_protein_tokenizer(),
        "smiles": build_smiles_tokenizer(smiles_corpus),
    }
    for domain, tokenizer in tokenizers.items():
        directory = REPO / "tokenizers" / domain
        tokenizer.save_pretrained(directory)
        print(f"{directory.relative_to(REPO)}: {len(tokenizer)} tokens")


if __name__ == "__main__":
    main()
