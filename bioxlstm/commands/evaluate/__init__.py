"""`bioxlstm evaluate`: the field's evaluation protocols, one module per evaluation."""

from . import chem, in_context

# In the order `evaluate --help` lists them.
EVALUATIONS = (chem, in_context)


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="the field's evaluation protocols: generated molecules, in-context generation",
        description="Measure generated sequences and models the way the field reports them.",
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for evaluation in EVALUATIONS:
        evaluation.add_parser(evaluations)
