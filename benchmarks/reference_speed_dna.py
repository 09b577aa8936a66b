"""Training speed on CPU: converted DNA-xLSTM models against the reference implementation's own path.

For each architecture a model is built with the reference code (ml-jku/DNA-xLSTM; random weights,
moved off their initialisation), written as a training run exactly as the reference writes one
(`scripts/reference_fixtures/dna_xlstm.py`), converted with `bioxlstm.convert`, and both run on
the same weights:

- training tokens/s: forward + backward of the same cross-entropy over all positions, batch 1, at
  2k and 8k tokens (sLSTM models at 2k only by default, see --slstm-max-length); one short warm-up
  step, then the mean of `--steps` timed steps. The reference runs as
  its training does on CPU: vanilla sLSTM backend (a Python loop over time steps), the mLSTM
  backend of the published runs ("chunkwise", chunk 1024), every block under
  `torch.utils.checkpoint`. Ours: the native chunkwise kernels.
- decoding: DNA-xLSTM has no step path (its models read the whole sequence at once; a causal
  model would recompute the whole prefix per token), so there is no reference number. For the
  causal model our recurrent decoding tokens/s (64 steps after the prefix) is written alone.

Architectures: the published MLM "ph" model (blockwise bidirectional, 4 sLSTM blocks) and a causal
mLSTM model with RoPE (4 blocks), both d_model 128 (about the published 500k size).

    python benchmarks/reference_speed_dna.py --reference /path/to/DNA-xLSTM
    python benchmarks/reference_speed_dna.py --reference /path/to/DNA-xLSTM --lengths 256 --steps 1  # smoke run

Writes benchmarks/results/reference_speed_dna.csv: architecture, implementation, task, tokens,
tokens_per_s, ratio (ours / reference), parameters, max_logit_diff (ours vs the reference on the
benchmark input, eval mode), note. Needs torch, omegaconf, dacite and pytorch-lightning.
"""

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bioxlstm.convert import convert  # noqa: E402
from training_speed import training_tokens_per_s  # noqa: E402
from bioxlstm.models import BioXLSTMForCausalLM, BioXLSTMForMaskedLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "mlm_slstm_ph": dict(d_model=128, n_layer=4, s_lstm_at=[0, 1, 2, 3], bidirectional=True),
    "clm_mlstm_rope": dict(d_model=128, n_layer=4, s_lstm_at=[], m_backend="chunkwise", m_chunk_size=1024),
}


def fixture_module():
    spec = importlib.util.spec_from_file_location("dna_fixtures", ROOT / "scripts" / "reference_fixtures" / "dna_xlstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(fixtures, reference, overrides: dict, length: int):
    modelling_xlstm = reference[0]
    fields = {**fixtures.PUBLISHED, **overrides, "max_length": length}  # RoPE needs S == max_length there
    if fields["m_backend"] == "chunkwise":  # its chunkwise kernel needs S to be a multiple of the chunk
        fields["m_chunk_size"] = min(fields["m_chunk_size"], length)
    config = modelling_xlstm.xLSTMConfig(**fields)
    if config.xlstm_cfg.slstm_block is not None:
        config.xlstm_cfg.slstm_block.slstm.backend = "vanilla"
    torch.manual_seed(0)
    model = modelling_xlstm.xLSTMLMHeadModel(config)
    fixtures.perturb(model, torch.Generator().manual_seed(0))
    return model, fields


def converted_model(fixtures, reference, model, fields, length: int, workdir: Path):
    """Write the reference model as a training run, convert it, load ours."""
    run = workdir / f"run_{length}"
    run.mkdir(parents=True)
    model_fields = {"_target_": "models.dna_xlstm.modelling_xlstm.xLSTMConfig", **fields, "complement_map": None}
    (run / "model_config.json").write_text(json.dumps({"config": model_fields}))
    fixtures.write_checkpoint(
        run / "checkpoints" / "test" / "loss.ckpt",
        fixtures.cuda_layout_state(model, reference[1], reference[2]),
        fixtures.hydra_config({"_name_": "xlstm_lm", "config": model_fields}, length, fields["bidirectional"]),
    )
    directory = convert(run, workdir / f"converted_{length}")
    model_class = BioXLSTMForMaskedLM if fields["bidirectional"] else BioXLSTMForCausalLM
    return model_class.from_pretrained(directory)


def decoding_tokens_per_s(model, ids: torch.Tensor, new_tokens: int = 64) -> float:
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            step = model(token, cache=cache, use_cache=True)
            cache, token = step.cache, step.logits[:, -1:].argmax(-1)
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ml-jku/DNA-xLSTM")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument(
        "--slstm-max-length", type=int, default=2048,
        help="skip longer contexts for sLSTM models: both implementations loop over time steps in Python, "
        "and one 8k training step of the reference takes most of an hour on 2 shared cores",
    )
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reference_speed_dna.csv")
    args = parser.parse_args()
    fixtures = fixture_module()
    reference = fixtures.import_reference(args.reference.resolve())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.architectures:
            for length in args.lengths:
                if ARCHITECTURES[name].get("s_lstm_at") and length > args.slstm_max_length:
                    print(f"{name} {length}: skipped (--slstm-max-length {args.slstm_max_length})")
                    continue
                ref, fields = reference_model(fixtures, reference, ARCHITECTURES[name], length)
                ours = converted_model(fixtures, reference, ref, fields, length, Path(tmp) / name)
                ref.train(), ours.train()
                ids = torch.randint(7, 11, (1, length), generator=torch.Generator().manual_seed(length))
                with torch.no_grad():
                    ours.eval(), ref.eval()
                    check = (ours(ids).logits - ref(ids).logits).abs().max().item()
                    ours.train(), ref.train()
                # A full-length warm-up of an sLSTM model costs minutes; the reference's RoPE and chunkwise
                # mLSTM only run at the length the model was built for.
                warmup = 128 if fields["s_lstm_at"] else length
                speeds = {
                    "reference": training_tokens_per_s(lambda x: ref(x).logits, list(ref.parameters()), ids, args.steps, warmup),
                    "bioxlstm": training_tokens_per_s(lambda x: ours(x).logits, list(ours.parameters()), ids, args.steps, warmup),
                }
                parameters = sum(p.numel() for p in ours.parameters())
                for implementation, speed in speeds.items():
                    rows.append(dict(architecture=name, implementation=implementation, task="train", tokens=length,
                                     tokens_per_s=round(speed, 1), ratio=round(speeds["bioxlstm"] / speeds["reference"], 2),
                                     parameters=parameters, max_logit_diff=f"{check:.1e}", note=""))
                print(f"{name} train {length}: reference {speeds['reference']:.0f} tok/s, bioxlstm {speeds['bioxlstm']:.0f} "
                      f"tok/s, ratio {speeds['bioxlstm'] / speeds['reference']:.2f} (logit diff {check:.1e}, {parameters} params)", flush=True)
                if not fields["bidirectional"]:
                    ours.eval()
                    speed = decoding_tokens_per_s(ours, ids)
                    rows.append(dict(architecture=name, implementation="bioxlstm", task="decode", tokens=length,
                                     tokens_per_s=round(speed, 1), ratio=None, parameters=parameters, max_logit_diff="",
                                     note="64 greedy steps through the recurrent cache"))
                    rows.append(dict(architecture=name, implementation="reference", task="decode", tokens=length,
                                     tokens_per_s=None, ratio=None, parameters=parameters, max_logit_diff="",
                                     note="no step path in DNA-xLSTM"))
                    print(f"{name} decode after {length}: bioxlstm {speed:.0f} tok/s (reference: no step path)", flush=True)
                del ref, ours
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
