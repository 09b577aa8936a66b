"""`bioxlstm convert`: a published Prot-xLSTM, DNA-xLSTM or Chem-xLSTM checkpoint as a model directory."""

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Convert a checkpoint directory as a Bio-xLSTM research project publishes it into a model directory
of this suite (safetensors weights, config, model code, the matching tokenizer, a model card),
which every command and the transformers Auto classes (trust_remote_code=True) load.

  prot-xlstm  Prot-xLSTM: config.json + pytorch_model.bin (its save_pretrained)
  dna-xlstm   DNA-xLSTM: model_config.json + the Lightning checkpoint below it
              (checkpoints/test/loss.ckpt)
  chem-xlstm  Chem-xLSTM: model.pt + init_arguments.json

Token ids stay the reference's, so logits compare one to one with its code. No pickled code is
ever run (plain tensors only) and nothing is downloaded. OUTPUT must not exist (or be empty);
it appears only once the conversion has succeeded."""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a published Prot-/DNA-/Chem-xLSTM checkpoint",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="the checkpoint directory, as the project publishes it")
    parser.add_argument("--output", required=True, type=Path, help="model directory to create")
    parser.add_argument(
        "--from", dest="source_format", choices=("prot-xlstm", "dna-xlstm", "chem-xlstm"),
        help="the checkpoint's project (default: detected from the files in SOURCE)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..convert import convert

    output = convert(args.source, args.output, args.source_format)
    print(f"converted {args.source} to {output}", file=sys.stderr)
