"""`bioxlstm evaluate`: the field's evaluation protocols, one module per evaluation."""

from . import chem, finetune, in_context, probe, variants

# In the order `evaluate --help` lists them.
EVALUATIONS = (chem, in_context, variants, finetune, probe)


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="the field's evaluation protocols: molecules (MOSES), variant effects, fine-tuning, probes",
        description="Measure generated sequences and models the way the field reports them.",
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for evaluation in EVALUATIONS:
        evaluation.add_parser(evaluations)
