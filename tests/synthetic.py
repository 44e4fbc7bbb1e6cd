"""Tiny synthetic HiRISE data sets written in the exact official layouts, for unit tests.

Each class draws a distinct, learnable pattern (a bright blob whose position depends on the class)
on noise, so a small model's loss falls within a few steps.
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.classes import CLASS_NAMES

V32 = dict(images="map-proj-v3_2", labels="labels-map-proj_v3_2.txt",
           split="labels-map-proj_v3_2_train_val_test.txt", classmap="landmarks_map-proj-v3_2_classmap.csv")
V3 = dict(images="map-proj-v3", labels="labels-map-proj-v3.txt", split=None,
          classmap="landmarks_map-proj-v3_classmap.csv")


def tile(label: int, seed: int, size: int = 227) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 12, (size, size))
    cy, cx = 40 + 50 * (label // 3), 40 + 70 * (label % 3)
    yy, xx = np.mgrid[:size, :size]
    img += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 14.0**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(arr: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def official_files(version: str = "3.2", n_obs: int = 8, per_obs: int = 6, augment: tuple[str, ...] = ("r90", "fh"),
                   splits: bool = True, missing: int = 1, repeats: int = 1, seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of a small data set in the official layout (relative to its root)."""
    names = V32 if version == "3.2" else V3
    files: dict[str, bytes] = {}
    label_rows, split_rows = [], []
    n = 0
    for o in range(n_obs):
        obs = f"ESP_{10000 + o:06d}_{2000 + o:04d}_RED"
        split = ("train", "train", "train", "train", "val", "test")[o % 6] if splits else "train"
        for i in range(per_obs):
            label = (o + i) % len(CLASS_NAMES) if i % 2 else 0
            for suffix in ("", *augment):
                name = f"{obs}-{i:04d}{'-' + suffix if suffix else ''}.jpg"
                arr = tile(label, seed * 100000 + n)
                n += 1
                files[f"{names['images']}/{name}"] = jpeg(arr)
                label_rows.append(f"{name} {label}")
                split_rows.append(f"{name} {label} {split}")
    for k in range(missing):  # listed, never written
        name = f"ESP_099999_0000_RED-{k:04d}.jpg"
        label_rows.append(f"{name} 1")
        split_rows.append(f"{name} 1 train")
    for row in [r for r in split_rows if r.split()[1] != "0"][:repeats]:
        split_rows.append(row)  # the official file repeats some minority rows
    files[names["labels"]] = ("\n".join(label_rows) + "\n").encode()
    if names["split"]:
        files[names["split"]] = ("\n".join(split_rows) + "\n").encode()
    files[names["classmap"]] = "".join(f"{i},{c}\n" for i, c in enumerate(CLASS_NAMES)).encode()
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(f"{top}/{rel}" if top else rel, data)
    return path


def official_zip(path: Path) -> tuple[Path, list[str]]:
    """A small official v3.2 zip (members stored, not compressed); returns it and its tile members."""
    files = official_files("3.2", n_obs=6, per_obs=4, augment=(), missing=0)
    write_zip(path, files)
    return path, sorted(n for n in files if n.endswith(".jpg"))


def zip_data_offset(path: Path, member: str) -> int:
    """Where a member's bytes start in the zip (after its local header): where to damage it."""
    with zipfile.ZipFile(path) as zf:
        start = zf.getinfo(member).header_offset
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[start + 26:start + 30])
    return start + 30 + name_len + extra_len


def write_plain(root: Path, n: int = 16, seed: int = 7, with_observation: bool = False) -> Path:
    """A researcher's own tiles: tiles/*.jpg and labels.csv (file,label), labels by id and name."""
    rows = ["file,label"]
    for i in range(n):
        label = i % len(CLASS_NAMES)
        name = f"ESP_088888_1111_RED-{i:04d}.jpg" if with_observation else f"own-{i}.jpg"
        (root / "tiles").mkdir(parents=True, exist_ok=True)
        (root / "tiles" / name).write_bytes(jpeg(tile(label, seed * 1000 + i)))
        rows.append(f"tiles/{name},{label if i % 2 else CLASS_NAMES[label]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
