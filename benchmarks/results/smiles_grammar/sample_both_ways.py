"""Alternating chunks of unconstrained and constrained samples from the bundled chem model, appended as
they come, so a run cut short still leaves two matched sets. Run as `python sample_both_ways.py 20 0`
(20 chunks of 16, seeds 1000-1019; the second argument skips that many unconstrained chunks, for a
resumed run). Writes /tmp/gram/chunk_none.smi and /tmp/gram/chunk_smiles.smi."""
import sys, time
import torch
from bioxlstm.pretrained import load_pretrained
from bioxlstm.tasks.generate import generate_sequences
from bioxlstm.chem import is_valid
model, tok = load_pretrained("chem")
chunk = 16
for i in range(int(sys.argv[1])):
    for name, grammar in (("none", False), ("smiles", True)):
        if name == "none" and i < int(sys.argv[2]):
            continue
        t = time.time()
        out = generate_sequences(model, tok, chunk, seed=1000 + i, grammar=grammar, batch_size=chunk)
        with open(f"/tmp/gram/chunk_{name}.smi", "a") as f:
            for s in out:
                f.write((s.sequence or "") + "\n")
        lengths = [len(tok(s.sequence, add_special_tokens=False)["input_ids"]) for s in out]
        print(i, name, f"{time.time()-t:.1f}s", "valid", sum(is_valid(s.sequence) for s in out), "unfinished", sum(not s.finished for s in out), "maxlen", max(lengths), flush=True)
