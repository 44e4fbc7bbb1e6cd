"""`python -m core.ood CHECKPOINT`: add an out-of-distribution reference to a checkpoint trained before they existed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import OODError
from .fit import fit_reference


def main(argv: list[str] | None = None) -> int:
    """`python -m core.ood CHECKPOINT`: add an out-of-distribution reference to a checkpoint trained before
    they existed, from the data it records (or --data), rewriting the file atomically."""
    from core.checkpoint import CheckpointError, model_from_payload, read_checkpoint
    from core.checkpoint_file import save_checkpoint
    from core.data import DataError, DataSpec, load_dataset
    from core.data.cli import add_data_arguments

    parser = argparse.ArgumentParser(prog="python -m core.ood", description=main.__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", action="append", metavar="PATH",
                        help="data folder or zip (default: the data the checkpoint records; repeat for several)")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        payload = read_checkpoint(args.checkpoint)
        loaded = model_from_payload(payload, args.checkpoint)
        config = dict(payload.get("config") or {})
        spec = DataSpec.from_args(args.data, args) if args.data else DataSpec.from_mapping(config)
        if not spec.paths:
            raise DataError("the checkpoint records no data: pass --data")
        data = load_dataset(spec)
        density = fit_reference(loaded, data)
        payload["ood"] = density.to_dict()
        save_checkpoint(args.checkpoint, payload)
    except (CheckpointError, DataError, OODError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: out-of-distribution reference added ({density.class_means.shape[1]} features, "
          f"{len(density.components)} components, calibrated on the model's validation tiles)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
