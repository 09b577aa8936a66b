"""`bioxlstm embed`: one vector per sequence (or per token), to Parquet or NumPy."""

import argparse
from pathlib import Path

from ..domains import allows
from .options import input_options, input_records, load_model, model_options


def add_parser(commands) -> None:
    embed = commands.add_parser(
        "embed", parents=[model_options(), input_options()], help="embed sequences as vectors",
        description=(
            "Embed every sequence of a file. Long sequences are processed window by window with the "
            "recurrent state carried, so a whole genome embeds in the memory of one window."
        ),
    )
    embed.add_argument("--output", required=True, help="out.parquet (columns id, embedding) or out.npy (ids in out.ids.txt)")
    embed.add_argument("--pooling", default="mean", choices=["mean", "max", "last", "cls", "none"],
                       help="how token vectors become one vector; none keeps one per token (Parquet only)")
    embed.add_argument("--layer", type=int, default=-1, help="hidden-state index: 0 token embeddings, -1 final output")
    embed.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..tasks import embed_records
    from ..tasks.running import is_bidirectional

    output = Path(args.output)
    if output.suffix not in (".parquet", ".npy"):
        raise ValueError(f"{output}: embeddings are written as .parquet or .npy")
    if output.suffix == ".npy" and args.pooling == "none":
        raise ValueError("--pooling none gives one vector per token, of varying count: write a .parquet file")
    model, tokenizer = load_model(args)
    if args.pooling == "cls" and not is_bidirectional(model):
        raise ValueError(
            "--pooling cls reads the <cls> token, which a causal model sees before the sequence; use mean, max or last"
        )
    if args.rc_invariant and not allows(model.config.domain, "has_strands"):
        raise ValueError(f"--rc-invariant needs a DNA model; this one is for {model.config.domain}")
    embeddings = embed_records(
        model, tokenizer, input_records(args, model), pooling=args.pooling, layer=args.layer,
        rc_invariant=args.rc_invariant, window=args.window, batch_size=args.batch_size,
    )
    if output.suffix == ".npy":
        ids, vectors = [], []
        for record_id, vector in embeddings:
            ids.append(record_id)
            vectors.append(vector)
        np.save(output, np.stack(vectors).astype(np.float32))
        output.with_suffix(".ids.txt").write_text("".join(f"{i}\n" for i in ids))
        return
    writer = None
    try:
        for record_id, vector in embeddings:  # one row group per sequence: memory stays flat
            table = pa.table({"id": [record_id], "embedding": [vector.astype(np.float32).tolist()]})
            writer = writer or pq.ParquetWriter(output, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
