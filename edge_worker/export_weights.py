"""``python -m edge_worker.export_weights MODEL OUT`` / ``mvs export-weights``: a stylizer's learned weights as a
tensor blob.

The aggregator seeds an empty model store from such a blob (``mvs aggregator --init OUT``). It reads the
:mod:`streaming.tensors` format only, so the cloud never loads torch or the model code; the conversion from a
model file happens here, on the edge side, where the model is known.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from edge_worker.model.base import Trainable
from edge_worker.model.registry import DNN_NAME, LITE_NAME
from edge_worker.stylizers import load_stylizer
from streaming.tensors import NamedArrays, encode_tensors


def learned_weights(model: str) -> NamedArrays:
    """The learned weights (what federated learning exchanges) of ``dnn``, ``lite`` or a saved stylizer model file.

    ``ValueError`` if the stylizer is not trainable, ``FileNotFoundError`` if the file does not exist.
    """
    stylizer = load_stylizer(model)
    if not isinstance(stylizer, Trainable):
        raise ValueError(f"{model} holds no trainable model")
    return stylizer.learned_state()


def export_weights(model: str, out: Path) -> NamedArrays:
    """Write :func:`learned_weights` of ``model`` to ``out`` as a tensor blob; return them."""
    weights = learned_weights(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_tensors(weights))
    return weights


def build_parser() -> argparse.ArgumentParser:
    """CLI of the export."""
    p = argparse.ArgumentParser(
        prog="mvs export-weights",
        description="Write a stylizer's learned weights as a tensor blob, the aggregator's --init.",
    )
    p.add_argument(
        "model",
        help=f"{DNN_NAME} (the bundled paper model), {LITE_NAME} (the lite model) or a stylizer model file (.pt)",
    )
    p.add_argument("out", type=Path, help="the tensor blob to write")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        weights = export_weights(args.model, args.out)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"mvs export-weights: {exc}") from exc
    print(f"{args.out}: {len(weights)} tensors, {sum(w.size for w in weights.values())} weights")


if __name__ == "__main__":
    main()
