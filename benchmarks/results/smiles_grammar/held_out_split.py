"""The held-out split of the bundled chem model's recipe (chem-clm-tiny: eval_fraction 0.01 of both
ChEMBL files, by the crc32 hash of each example's tokens, data seed 0), as in bioxlstm.data.datasets."""
import zlib
from bioxlstm.io import read_records
from bioxlstm.tokenization import load_tokenizer
tok = load_tokenizer("smiles")
held = []
total = 0
for path in ["data/chembl31_train_50k.smi.gz", "data/chembl31_valid_50k.smi.gz"]:
    for record in read_records(path, domain="smiles"):
        total += 1
        ids = [tok.cls_token_id, *tok(record.sequence, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        if zlib.crc32(str(ids).encode(), 0) % 10000 < 100:
            held.append(record.sequence)
open("/tmp/gram/heldout.smi", "w").write("".join(s + "\n" for s in held))
print(total, len(held))
