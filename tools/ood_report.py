"""How the out-of-distribution check scores real tiles and things that are not tiles (docs/ood.md's figures).

    python tools/ood_report.py [--checkpoint F] [--data PATH] [--tiles 150] [--seeds 4]

Every input goes through `core.predict.predict_array`, as an upload on the Explain page does, and the
typicality it reports is printed: real tiles (the checkpoint's recorded test tiles found in --data, else a
seeded sample of its originals), uniform pixel noise, Gaussian noise, flat and faintly noisy grey images, and
two natural photographs from scikit-image. A typicality is the share of validation tiles that lie closer to the
training tiles; `core.ood.FLAG_SHARE` and above is flagged as unusual.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.checkpoint import CheckpointError, load_checkpoint
from core.cliargs import at_least
from core.data import DataError, load_dataset
from core.imageio import TILE_SIZE
from core.ood import FLAG_SHARE
from core.predict import predict_array
from core.settings import SHARED_DATA_DIR


def real_tiles(loaded, data_path: str, n: int) -> tuple[list[np.ndarray], str, bool]:
    """Up to `n` original tiles, a label for them, and whether they are the checkpoint's recorded test tiles (else
    a seeded sample of the originals, some of which it may have trained on)."""
    data = load_dataset([data_path], label_overrides=False)
    originals = [r for r in data.records if r.is_original]
    test = set(loaded.splits.get("test", {}).get("files") or ())
    chosen = [r for r in originals if r.name in test]
    is_test = len(chosen) >= n
    if not is_test:
        chosen = originals
    rng = np.random.default_rng(0)
    chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), min(n, len(chosen)), replace=False))]
    return list(data.tiles(chosen)), f"{len(chosen)} from {Path(data_path).name}", is_test


def not_tiles(seeds: int) -> dict[str, list[np.ndarray]]:
    from skimage import color
    from skimage import data as photos
    size = (TILE_SIZE, TILE_SIZE)
    rngs = [np.random.default_rng(s) for s in range(seeds)]
    gray = (color.rgb2gray(photos.chelsea()) * 255).astype(np.uint8)
    return {
        "uniform noise": [r.integers(0, 256, size, dtype=np.uint8) for r in rngs],
        "gaussian noise (mean 128, sd 40)": [np.clip(r.normal(128, 40, size), 0, 255).astype(np.uint8) for r in rngs],
        "flat grey (128)": [np.full(size, 128, np.uint8)],
        "faintly noisy grey (sd 3)": [np.clip(r.normal(128, 3, size), 0, 255).astype(np.uint8) for r in rngs],
        "photo: scikit-image camera": [photos.camera()],
        "photo: scikit-image chelsea (cat)": [gray],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--data", default=str(SHARED_DATA_DIR / "hirise-v3_2-subset"), help="where real tiles come from")
    parser.add_argument("--tiles", type=at_least(1), default=150, help="how many real tiles")
    parser.add_argument("--seeds", type=at_least(1), default=4, help="how many noise images of each kind")
    args = parser.parse_args()
    try:
        loaded = load_checkpoint(args.checkpoint)
        if loaded.ood is None:
            print(f"error: {loaded.path} has no out-of-distribution reference (python -m core.ood adds one)",
                  file=sys.stderr)
            return 2
        tiles, where, is_test = real_tiles(loaded, args.data, args.tiles)
    except (CheckpointError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    groups = {f"real tiles: {where}": tiles, **not_tiles(args.seeds)}
    print(f"{loaded.path.name}: typicality (share of validation tiles closer to the training tiles); "
          f"flagged at >= {FLAG_SHARE}. Real tiles: " + ("its recorded test tiles" if is_test else
                                                            "originals, not its recorded test tiles: it may have trained on some"))
    print(f"{'input':<40}{'n':>5}{'median':>8}{'p10':>7}{'p90':>7}{'min':>7}{'max':>7}{'flagged':>9}")
    for name, images in groups.items():
        t = np.array([predict_array(loaded, img).typicality for img in images])
        print(f"{name:<40}{len(t):>5}{np.median(t):>8.2f}{np.quantile(t, 0.1):>7.2f}{np.quantile(t, 0.9):>7.2f}"
              f"{t.min():>7.2f}{t.max():>7.2f}{(t >= FLAG_SHARE).mean():>9.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
