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
    from ..progress import token_progress
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
    with token_progress("embedding") as bar:
        embeddings = embed_records(
            model, tokenizer, input_records(args, model), pooling=args.pooling, layer=args.layer,
            rc_invariant=args.rc_invariant, window=args.window, batch_size=args.batch_size, progress=bar.update,
        )
        _write(embeddings, output)


def _write(embeddings, output: Path) -> None:
    import numpy as np

    from ..io import atomic_output

    if output.suffix == ".npy":
        ids, vectors = [], []
        for record_id, vector in embeddings:
            ids.append(record_id)
            vectors.append(vector)
        with atomic_output(output) as temporary, atomic_output(output.with_suffix(".ids.txt")) as temporary_ids:
            np.save(temporary, np.stack(vectors).astype(np.float32))
            temporary_ids.write_text("".join(f"{i}\n" for i in ids))
        return
    with atomic_output(output) as temporary:
        _write_parquet(embeddings, temporary)


# A row group is written once it holds this many sequences or float values: few enough groups for
# fast reading, and memory that stays flat however many sequences (or tokens, with --pooling none) come.
ROWS_PER_GROUP, VALUES_PER_GROUP = 4096, 1 << 24


def _write_parquet(embeddings, path: Path) -> None:
    """Columns `id` (string) and `embedding`: float32 fixed-size lists (one vector per sequence),
    or lists of them with --pooling none (one vector per token)."""
    import numpy as np

    ids, vectors, values, writer = [], [], 0, None
    try:
        for record_id, vector in embeddings:
            ids.append(record_id)
            vectors.append(np.asarray(vector, dtype=np.float32))
            values += vectors[-1].size
            if len(ids) >= ROWS_PER_GROUP or values >= VALUES_PER_GROUP:
                writer = _write_row_group(writer, path, ids, vectors)
                ids, vectors, values = [], [], 0
        if ids or writer is None:
            writer = _write_row_group(writer, path, ids, vectors)
    finally:
        if writer is not None:
            writer.close()


def _write_row_group(writer, path: Path, ids: list[str], vectors: list):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = vectors[0].shape[-1] if vectors else 0
    flat = pa.array(np.concatenate([v.reshape(-1) for v in vectors]) if vectors else np.zeros(0, np.float32), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, width)
    if vectors and vectors[0].ndim == 2:  # one vector per token
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), column)
    table = pa.table({"id": pa.array(ids, pa.string()), "embedding": column})
    writer = writer or pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    return writer
