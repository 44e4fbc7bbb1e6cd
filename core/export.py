"""`python -m core.export CHECKPOINT [--out model.onnx]`: a checkpoint's ONNX twin, verified against torch.

The twin computes the penultimate features and the logits in one run, with a dynamic batch axis: what
prediction, evaluation, scans, the OOD check and Explore need. Its weights are stored in half precision (a shipped
checkpoint holds them so already: nothing is lost) and cast back to float32 once, when ONNX Runtime loads it. Its
metadata carries the classes, input size, normalisation, temperature, the out-of-distribution reference and the
SHA-256 of the checkpoint. Before it is written it is run against torch on real tiles: the largest probability
difference and the share of equal predictions are measured, and a twin below `MIN_AGREEMENT` is not written. It is
written whole (a temporary file renamed into place) under a lock: two sessions asking for the same first export
make one, and no half-written file is ever loaded."""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.atomic import atomic_path
from core.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from core.digest import file_digest
from core.imageio import TILE_SIZE
from core.inference import model_input, probabilities
from core.models import get_layer, spec
from core.onnx_model import FORMAT, OnnxError, load_onnx, twin_path

OPSET = 17
MIN_AGREEMENT = 0.995  # the share of check tiles whose predicted class must be the same as torch's
MAX_PROB_DIFF = 0.01  # the largest calibrated-probability difference allowed on any check tile and class
CHECK_TILES = 64
_EXPORTING = threading.Lock()


class ExportError(RuntimeError):
    """A model this exporter cannot take, or a twin that disagrees with its checkpoint: one line."""


class SplitHead(nn.Module):
    """The model with its head split off: (features, logits), the features being exactly what the head reads.
    A traced forward hook (`core.inference.FeaturesAndLogits`) does not export faithfully; this does."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.body = copy.deepcopy(model).float().eval()
        parent, _, leaf = head.rpartition(".")
        holder = get_layer(self.body, parent) if parent else self.body
        self.head = getattr(holder, leaf)
        setattr(holder, leaf, nn.Identity())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(self.body(x), 1)
        return features, self.head(features)


@dataclass
class Verified:
    tiles: int
    agreement: float
    max_prob_diff: float

    def as_dict(self) -> dict:
        return {"tiles": self.tiles, "agreement": round(self.agreement, 5), "max_prob_diff": float(self.max_prob_diff)}

    def describe(self) -> str:
        return (f"{self.agreement:.1%} of {self.tiles} check tiles predicted as torch does, largest probability "
                f"difference {self.max_prob_diff:.1e}")


def _half_initializers(model_proto) -> None:
    """Store every large float32 initializer whose values are exactly half-precision numbers (a shipped checkpoint's
    weights are) as float16, cast back once when the runtime loads the graph (constant folding): half the file,
    the very same numbers. Batch norms are exported unfolded for this (ONNX Runtime folds them when it loads)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    casts, keep = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if values is None or values.size < 1024 or not np.array_equal(values.astype(np.float16).astype(np.float32),
                                                                       values):
            keep.append(init)  # small, or not exactly a half-precision number: kept as it is
            continue
        half = numpy_helper.from_array(values.astype(np.float16), init.name + "__fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"cast_{init.name}"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)


def _metadata(loaded: LoadedModel, checkpoint: Path, verified: Verified | None) -> dict:
    return {"class_names": list(loaded.class_names), "image_size": int(loaded.image_size),
            "mean": float(loaded.mean), "std": float(loaded.std), "temperature": float(loaded.temperature),
            "arch": loaded.arch, "checkpoint": checkpoint.name, "checkpoint_sha256": file_digest(checkpoint),
            "ood": loaded.ood.to_dict() if loaded.ood is not None else None,
            "verified": verified.as_dict() if verified else None}


def to_onnx_bytes(loaded: LoadedModel, checkpoint: Path, verified: Verified | None = None) -> bytes:
    """The twin's bytes (features and logits, dynamic batch, half-precision weights, the studio's metadata)."""
    import io

    import onnx

    wrapper = SplitHead(loaded.model, spec(loaded.arch).head)
    x = torch.zeros(2, 1, loaded.image_size, loaded.image_size)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(wrapper, (x,), buffer, input_names=["input"], output_names=["features", "logits"],
                              dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=OPSET, dynamo=False, do_constant_folding=False)
    except Exception as exc:  # torch raises many kinds for an operator ONNX cannot express
        raise ExportError(f"{loaded.arch} cannot be exported to ONNX: {str(exc).strip().splitlines()[0][:200]}") \
            from None
    proto = onnx.load_from_string(buffer.getvalue())
    _half_initializers(proto)
    del proto.metadata_props[:]
    for key, value in (("format", FORMAT), ("studio", json.dumps(_metadata(loaded, checkpoint, verified)))):
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def check_tiles(data: Path | None, n: int = CHECK_TILES) -> np.ndarray:
    """Up to `n` real tiles to verify on: originals of the data source at `data` (the shared v3.2 subset by
    default), round-robin over the classes so the rare ones are checked too; only those tiles are decoded.
    ExportError when none can be read: a twin is never written unverified."""
    from core.data.records import DataError
    from core.data.sources import read_source
    from core.imageio import ImageError, decode_tile
    from core.settings import SHARED_DATA_DIR

    path = Path(data) if data else SHARED_DATA_DIR / "hirise-v3_2-subset"
    if not path.exists():
        raise ExportError(f"no real tiles to verify the twin on at {path}: give --check-data PATH")
    try:
        source = read_source(path)
    except (DataError, OSError) as exc:
        raise ExportError(f"cannot read the check tiles at {path}: {exc}") from None
    by_class: dict[int, list] = {}
    for r in sorted(source.records, key=lambda r: (not r.is_original, r.path)):
        by_class.setdefault(r.label, []).append(r)
    tiles: list[np.ndarray] = []
    while len(tiles) < n and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(tiles) < n:
                r = by_class[label].pop(0)
                try:
                    tiles.append(decode_tile(source.storage.read(r.path), r.name)[0])
                except (ImageError, OSError):
                    continue  # an unreadable tile is not a check; the next one of its class is
    if not tiles:
        raise ExportError(f"no readable tile at {path} to verify the twin on")
    return np.stack(tiles)


def verify(loaded: LoadedModel, onnx_bytes: bytes, tiles: np.ndarray) -> Verified:
    """Run the twin and torch on the same tiles: the share of equal predictions and the largest probability
    difference (both calibrated by the same temperature)."""
    import onnxruntime as ort

    from core.onnx_model import session_options

    session = ort.InferenceSession(onnx_bytes, session_options(), providers=["CPUExecutionProvider"])
    x = model_input(tiles, loaded.mean, loaded.std, loaded.image_size, "cpu").float()
    with torch.no_grad():
        ref = loaded.model.float()(x).numpy()
    _, logits = session.run(["features", "logits"], {"input": x.numpy()})
    p_ref, p_onnx = probabilities(ref, loaded.temperature), probabilities(logits, loaded.temperature)
    return Verified(len(tiles), float((p_ref.argmax(1) == p_onnx.argmax(1)).mean()),
                    float(np.abs(p_ref - p_onnx).max()))


def export(checkpoint: Path, out: Path | None = None, check_data: Path | None = None,
           tiles: np.ndarray | None = None) -> tuple[Path, Verified]:
    """Export, verify and write the twin of `checkpoint` (beside it by default). ExportError when it cannot be
    made or disagrees with torch; nothing is written then."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out else twin_path(checkpoint)
    tiles = check_tiles(check_data) if tiles is None else tiles
    if tiles.ndim != 3 or tiles.shape[1:] != (TILE_SIZE, TILE_SIZE):
        raise ExportError(f"check tiles must be (N, {TILE_SIZE}, {TILE_SIZE}), not {tiles.shape}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # one export at a time: torch's exporter keeps global state (threads), and a second process asking for the same
    # twin waits for the first and then exports again over it, whole (the file is replaced atomically)
    with _EXPORTING, open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = load_checkpoint(checkpoint, engine="torch")
        verified = verify(loaded, to_onnx_bytes(loaded, checkpoint), tiles)
        if verified.agreement < MIN_AGREEMENT or verified.max_prob_diff > MAX_PROB_DIFF:
            raise ExportError(f"the twin disagrees with {checkpoint.name}: {verified.describe()} (needed: "
                              f"{MIN_AGREEMENT:.1%} and at most {MAX_PROB_DIFF}); nothing was written")
        with atomic_path(out) as tmp:
            tmp.write_bytes(to_onnx_bytes(loaded, checkpoint, verified))
    load_onnx(out, expect_digest=file_digest(checkpoint))  # what serving will read, read back once
    return out, verified


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where the twin goes (default: beside the checkpoint)")
    parser.add_argument("--check-data", type=Path, default=None,
                        help="real tiles to verify on (default: ../shared/data/hirise-v3_2-subset)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, verified = export(args.checkpoint, args.out, args.check_data)
    except (ExportError, CheckpointError, OnnxError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB): {verified.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
