"""The data layer on synthetic fixtures in the exact official layouts."""
from __future__ import annotations

import functools
import hashlib
import operator
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.data import (
    DataError,
    DataSpec,
    find_leakage,
    load_dataset,
    merge_sources,
    open_tile_cache,
    parse_name,
    read_source,
    summarize,
)
from core.data.__main__ import main as data_cli
from core.data.loader import DeviceBatches, TileDataset, begin_epoch, split_dataset, training_batches
from tests import model_fixtures, synthetic


def tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name, obs, landmark, aug", [
    ("ESP_011283_2265_RED-0030-r90.jpg", "ESP_011283_2265_RED", "ESP_011283_2265_RED-0030", "r90"),
    ("ESP_011283_2265_RED-0030.jpg", "ESP_011283_2265_RED", "ESP_011283_2265_RED-0030", ""),
    ("PSP_005150_1490_RED-0023-brt.jpg", "PSP_005150_1490_RED", "PSP_005150_1490_RED-0023", "brt"),
    ("map-proj-v3_2/ESP_011283_2265_RED-0030-fv.jpg", "ESP_011283_2265_RED", "ESP_011283_2265_RED-0030", "fv"),
    ("extra-17.jpg", None, "extra-17", ""),
])
def test_parse_name(name, obs, landmark, aug):
    parts = parse_name(name)
    assert (parts.observation, parts.landmark, parts.aug) == (obs, landmark, aug)


def test_official_v32_folder(v32_folder):
    src = read_source(v32_folder)
    assert src.kind == "official v3.2" and src.version == "3.2"
    # 8 observations x 6 landmarks x (original + r90 + fh)
    assert len(src.records) == 8 * 6 * 3
    assert src.missing == ["ESP_099999_0000_RED-0000.jpg"]
    assert sum(src.repeats.values()) == 1  # repeats reported, dropped by default
    assert sum(r.is_original for r in src.records) == 48
    assert {r.split for r in src.records} == {"train", "val", "test"}
    rec = next(r for r in src.records if r.aug == "r90")
    assert rec.observation and rec.landmark and rec.path.startswith("map-proj-v3_2/")
    kept = read_source(v32_folder, keep_split_repeats=True)
    assert len(kept.records) == len(src.records) + 1


@pytest.mark.parametrize("top", ["", "hirise-map-proj-v3_2"])
def test_zip_reads_like_folder(tmp_path, v32_folder, top):
    files = synthetic.official_files("3.2")
    zipped = read_source(synthetic.write_zip(tmp_path / "hirise-map-proj-v3_2.zip", files, top))
    folder = read_source(v32_folder)
    key = lambda s: sorted((r.name, r.label, r.split, r.aug) for r in s.records)  # noqa: E731
    assert key(zipped) == key(folder)
    data = load_dataset([tmp_path / "hirise-map-proj-v3_2.zip"])
    assert data.tiles(data.records[:3]).shape == (3, 227, 227)


def test_v3_layout(v3_folder):
    src = read_source(v3_folder)
    assert src.kind == "official v3" and all(r.split is None for r in src.records)


@pytest.mark.parametrize("line, expect", [
    ("ESP_010000_2000_RED-0000.jpg", "line 2: malformed line"),
    ("ESP_010000_2000_RED-0000.jpg 11", "line 2: unknown class id 11"),
    ("ESP_010000_2000_RED-0000.jpg crater", "is not a class id"),
    ("../../etc/passwd 1", "unsafe"),
])
def test_malformed_label_file_names_file_and_line(tmp_path, line, expect):
    files = synthetic.official_files("3", n_obs=2, per_obs=2, augment=())
    first = files["labels-map-proj-v3.txt"].decode().splitlines()[0]
    files["labels-map-proj-v3.txt"] = f"{first}\n{line}\n".encode()
    root = synthetic.write_folder(tmp_path, files)
    before = tree_digest(root)
    with pytest.raises(DataError) as err:
        read_source(root)
    assert "labels-map-proj-v3.txt" in str(err.value) and expect in str(err.value)
    assert tree_digest(root) == before  # nothing on disk changed


def test_wrong_classmap_rejected(tmp_path):
    files = synthetic.official_files("3", n_obs=1, per_obs=1, augment=())
    files["landmarks_map-proj-v3_classmap.csv"] = b"0,other\n1,volcano\n"
    with pytest.raises(DataError, match="volcano"):
        read_source(synthetic.write_folder(tmp_path, files))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_source(tmp_path / "nope")
    with pytest.raises(DataError, match="no HiRISE data found"):
        read_source(tmp_path)
    files = synthetic.official_files("3", n_obs=1, per_obs=1, augment=(), missing=0)
    files["labels-map-proj-v3.txt"] = b""
    with pytest.raises(DataError, match="empty"):
        read_source(synthetic.write_folder(tmp_path / "empty", files))


def test_plain_tiles_csv_and_class_folders(tmp_path):
    src = read_source(synthetic.write_plain(tmp_path / "own"))
    assert src.kind == "plain tiles" and len(src.records) == 16
    assert all(r.trainable_only for r in src.records)
    assert [r.label for r in src.records[:3]] == [0, 1, 2]  # labels by name and by id
    folders = tmp_path / "byclass"
    for name in ("crater", "dark_dune"):
        (folders / name).mkdir(parents=True)
        (folders / name / "a.jpg").write_bytes(synthetic.jpeg(synthetic.tile(1, 1)))
    src = read_source(folders)
    assert sorted(r.label for r in src.records) == [1, 2]


def test_plain_csv_rejects_escaping_paths(tmp_path):
    root = synthetic.write_plain(tmp_path / "own", n=2)
    (root / "labels.csv").write_text("file,label\n/etc/passwd,0\n")
    with pytest.raises(DataError, match=r"labels.csv line 2: unsafe"):
        read_source(root)


def test_merge_dedups_by_name_and_content_and_reports_conflicts(tmp_path, v32_folder):
    v32 = synthetic.official_files("3.2")
    v3 = {k.replace("map-proj-v3_2/", "map-proj-v3/"): v for k, v in v32.items() if k.startswith("map-proj-v3_2/")}
    names = [k.split("/")[-1] for k in v3]
    # v3 labels: the first crater-labelled tile was called "other" in v3 (a relabel between versions)
    v32_labels = dict(line.split()[:2] for line in v32["labels-map-proj_v3_2.txt"].decode().splitlines())
    relabelled = next(n for n in names if v32_labels[n] != "0")
    v3["labels-map-proj-v3.txt"] = "".join(
        f"{n} {0 if n == relabelled else v32_labels[n]}\n" for n in names).encode()
    v3_root = synthetic.write_folder(tmp_path / "v3", v3)
    # a renamed copy of one v3.2 tile (same bytes, no observation) in plain tiles
    plain = tmp_path / "plain"
    (plain / "tiles").mkdir(parents=True)
    (plain / "tiles" / "copy.jpg").write_bytes(v32[f"map-proj-v3_2/{names[0]}"])
    (plain / "labels.csv").write_text(f"file,label\ntiles/copy.jpg,{v32_labels[names[0]]}\n")
    sources = [read_source(v3_root), read_source(v32_folder), read_source(plain)]

    merged, report = merge_sources(sources, "newest")
    assert len(merged) == len(sources[1].records)  # every v3 and plain tile was a duplicate
    assert all(src.version == "3.2" for src, _ in merged)
    assert len(report.duplicates_by_name) == len(sources[0].records)
    assert len(report.duplicates_by_content) == 1
    assert len(report.conflicts) == 1 and report.conflicts[0]["kept"] == int(v32_labels[relabelled])

    _, first = merge_sources(sources, "first")
    assert first.conflicts[0]["kept"] == 0  # v3 listed first wins
    merged_drop, drop = merge_sources(sources, "drop")
    assert drop.conflicts[0]["kept"] is None and len(merged_drop) == len(merged) - 1
    with pytest.raises(DataError, match="conflict policy"):
        merge_sources(sources, "oldest")


def test_grouped_split_is_deterministic_and_leak_free(tmp_path):
    files = synthetic.official_files("3.2", n_obs=24, per_obs=4, splits=False)
    root = synthetic.write_folder(tmp_path / "v32", files)
    plain = synthetic.write_plain(tmp_path / "own")
    a = load_dataset(DataSpec((root, plain), split_seed=3))
    b = load_dataset(DataSpec((root, plain), split_seed=3))
    assert "grouped" in a.split_method
    assert [(r.name, r.split) for r in a.records] == [(r.name, r.split) for r in b.records]
    assert {r.split for r in a.records} == {"train", "val", "test"}
    assert a.leakage == []
    assert all(r.split == "train" for r in a.records if r.trainable_only)
    c = load_dataset(DataSpec((root,), split_seed=4))
    assert [r.split for r in c.records] != [r.split for r in a.records if not r.trainable_only]


def test_leakage_check_finds_planted_leaks(v32_folder):
    data = load_dataset([v32_folder])
    assert data.leakage == [] and "official" in data.split_method
    recs = list(data.records)
    i = next(k for k, r in enumerate(recs) if r.split == "train" and r.aug)
    recs[i] = recs[i].with_split("test")  # an augmented copy crosses over
    problems = find_leakage(recs)
    assert any("observation" in p for p in problems) and any("landmark" in p for p in problems)


def test_tile_cache_reused_rebuilt_and_converts(tmp_path):
    files = synthetic.official_files("3", n_obs=2, per_obs=2, augment=(), missing=0)
    root = synthetic.write_folder(tmp_path / "v3", files)
    odd = root / "map-proj-v3" / "ESP_010000_2000_RED-0000.jpg"
    rgb = np.stack([synthetic.tile(0, 1, size=300)] * 3, axis=-1)
    odd.write_bytes(synthetic.jpeg(rgb, "RGB"))  # RGB and 300x300: converted with a note
    (root / "map-proj-v3" / "ESP_010000_2000_RED-0001.jpg").write_bytes(b"not a jpeg")
    cache_dir = tmp_path / "cache"
    src = read_source(root)
    c1 = open_tile_cache(src, cache_dir=cache_dir)
    assert c1.tiles.shape == (4, 227, 227) and c1.tiles.dtype == np.uint8
    assert any("resized from 300x300" in n for n in c1.notes["map-proj-v3/ESP_010000_2000_RED-0000.jpg"])
    assert "map-proj-v3/ESP_010000_2000_RED-0001.jpg" in c1.unreadable
    stamp = (c1.directory / "tiles.npy").stat().st_mtime_ns
    c2 = open_tile_cache(read_source(root), cache_dir=cache_dir)
    assert c2.directory == c1.directory and (c2.directory / "tiles.npy").stat().st_mtime_ns == stamp
    (root / "map-proj-v3" / "ESP_010001_2001_RED-0000.jpg").write_bytes(synthetic.jpeg(synthetic.tile(5, 99)))
    c3 = open_tile_cache(read_source(root), cache_dir=cache_dir)
    assert c3.directory != c1.directory  # the content changed: a new cache
    row = c3.row_of["map-proj-v3/ESP_010001_2001_RED-0000.jpg"]
    assert abs(int(c3.tiles[row].astype(int).mean()) - int(synthetic.tile(5, 99).mean())) <= 2


def test_summary_counts_and_baseline(v32_folder):
    s = summarize(load_dataset([v32_folder]))
    assert sum(sum(v) for v in s["counts"].values()) == 8 * 6 * 3
    for split, counts in s["originals"].items():
        assert s["majority_baseline"][split]["accuracy"] == pytest.approx(max(counts) / sum(counts))
    assert 0 < s["pixel_mean"] < 1 and 0 < s["pixel_std"] < 1
    assert s["sources"][0]["missing"] == 1 and s["leakage"] == []


def test_cli_summary(v32_folder, v3_folder, capsys, tmp_path):
    assert data_cli(["summary", str(v32_folder), str(v3_folder)]) == 0
    out = capsys.readouterr().out
    assert "majority-class baseline" in out and "merge report" in out and "missing" in out
    assert data_cli(["summary", str(tmp_path / "absent")]) == 2
    assert "not found" in capsys.readouterr().err


def test_loader_modes(v32_folder):
    data = load_dataset([v32_folder])
    flip = lambda t: t.flip(-1)  # noqa: E731
    ds = split_dataset(data, "train", originals_only=True, copies=[flip, flip])
    n = len(data.select("train", originals_only=True))
    assert len(ds) == 3 * n
    x, _y = ds[n]  # the first copy is the flipped original
    assert torch.equal(x, ds.tiles[0].flip(-1)) and x.dtype == torch.uint8 and x.shape == (1, 227, 227)
    loader = training_batches(ds, batch_size=8, device=torch.device("cpu"), balanced=True)
    assert isinstance(loader, DataLoader)  # per-tile copies need per-item work
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 1, 227, 227) and yb.shape == (8,)


def _tiles(n: int, labels: list[int] | None = None) -> TileDataset:
    """Tile i is filled with the value i, so a batch says which tiles it holds (n <= 256)."""
    tiles = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 4, axis=1).repeat(4, axis=2)
    return TileDataset(tiles, np.asarray(labels if labels is not None else [i % 8 for i in range(n)]))


def _ids(batches) -> list[list[int]]:
    return [x[:, 0, 0, 0].tolist() for x, _ in batches]


def test_device_batches_serve_each_tile_once_per_epoch_in_a_seeded_order():
    ds = _tiles(70)
    batches = training_batches(ds, batch_size=16, device=torch.device("cpu"), seed=3)
    assert isinstance(batches, DeviceBatches) and len(batches) == 4  # 70 // 16: the partial batch is dropped
    epoch0 = _ids(batches)
    assert [len(b) for b in epoch0] == [16] * 4
    flat = functools.reduce(operator.iadd, epoch0, [])
    assert len(set(flat)) == 64 and set(flat) <= set(range(70))
    x, y = next(iter(batches))
    assert x.dtype == torch.uint8 and x.shape == (16, 1, 4, 4) and torch.equal(y, ds.labels[x[:, 0, 0, 0].long()])
    assert _ids(batches) == epoch0  # same (seed, epoch): same order, so a resumed run sees what it would have
    begin_epoch(batches, 1)
    assert _ids(batches) != epoch0
    begin_epoch(batches, 0)
    assert _ids(batches) == epoch0
    small = training_batches(_tiles(5), batch_size=16, device=torch.device("cpu"))
    assert [len(b) for b in _ids(small)] == [5]  # fewer tiles than a batch: one partial batch, not none


def test_device_batches_shard_one_order_across_ranks():
    ds = _tiles(101)
    ranks = [training_batches(ds, 10, torch.device("cpu"), seed=1, rank=r, world=3) for r in range(3)]
    # 101 // 3 = 33 tiles each: 3 full batches; every rank takes the same number of steps (DDP needs it)
    assert {len(b) for b in ranks} == {3}
    for epoch in (0, 1):
        for b in ranks:
            begin_epoch(b, epoch)
        seen = [functools.reduce(operator.iadd, _ids(b), []) for b in ranks]
        assert all(len(s) == 30 for s in seen)
        assert not (set(seen[0]) & set(seen[1]) or set(seen[1]) & set(seen[2]) or set(seen[0]) & set(seen[2]))


def test_device_batches_balanced_draws_every_class_alike():
    labels = [0] * 180 + [1] * 15 + [2] * 5  # 90% one class, like `other`
    batches = training_batches(_tiles(200, labels), 50, torch.device("cpu"), balanced=True, num_classes=3)
    drawn = []
    for epoch in range(10):
        begin_epoch(batches, epoch)
        drawn += [int(v) for _, y in batches for v in y]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.all(np.abs(share - 1 / 3) < 0.05), share


def test_device_batches_refuse_per_tile_transforms():
    ds = TileDataset(np.zeros((4, 8, 8), np.uint8), np.zeros(4, np.int64), transform=lambda t: t)
    with pytest.raises(ValueError, match="DataLoader"):
        DeviceBatches(ds, 2, torch.device("cpu"))
    assert isinstance(training_batches(ds, 2, torch.device("cpu"), num_workers=0), DataLoader)


def _records(obs_per_class: dict[int, int], tiles_per_obs: int = 3) -> list:
    """Observations each holding `other` tiles plus tiles of one class (like HiRISE: classes cluster)."""
    from core.data.records import Record
    out, k = [], 0
    for label, n_obs in obs_per_class.items():
        for _ in range(n_obs):
            obs = f"ESP_{k:06d}_0000_RED"
            k += 1
            for t in range(tiles_per_obs * (8 if label == 0 else 1)):
                out.append(Record("s", f"{obs}-{t}.jpg", f"{obs}-{t}.jpg", label, observation=obs,
                                  landmark=f"{obs}-{t}"))
            out += [Record("s", f"{obs}-o{t}.jpg", f"{obs}-o{t}.jpg", 0, observation=obs, landmark=f"{obs}-o{t}")
                    for t in range(10)]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouped_split_places_every_class_with_three_observations(seed):
    from core.classes import CLASS_NAMES
    from core.data.split import assign_splits, coverage_warnings
    counts = {0: 40, 1: 12, 2: 3, 3: 5, 4: 4, 5: 3, 6: 3, 7: 2}  # spider: two observations only
    records, _ = assign_splits(_records(counts), "grouped", 0.15, 0.15, seed)
    for label, n in counts.items():
        sides = {r.split for r in records if r.label == label}
        assert sides == ({"train", "val", "test"} if n >= 3 else sides), (CLASS_NAMES[label], sides)
    again, _ = assign_splits(_records(counts), "grouped", 0.15, 0.15, seed)
    assert [r.split for r in again] == [r.split for r in records]  # deterministic for a seed
    assert not find_leakage(records)
    warnings = coverage_warnings(records, CLASS_NAMES)
    assert len(warnings) == 1 and warnings[0].startswith("class spider has no tiles in")
    assert "only 2 observations" in warnings[0]


def test_data_spec_reads_flat_configs_and_checks_the_shares():
    """One DataSpec for the seven data options; config.json and checkpoints keep them flat, old ones included."""
    from core.training.config import ConfigError, RunConfig
    old = {"data": ["/a", "/b"], "conflict_policy": "first", "split_mode": "grouped", "val_fraction": 0.2,
           "test_fraction": 0.1, "split_seed": 7, "keep_split_repeats": True, "model": "simple_cnn"}
    spec = DataSpec.from_mapping(old)
    assert spec == DataSpec(("/a", "/b"), "first", "grouped", 0.2, 0.1, 7, True)
    assert DataSpec.from_mapping(spec.flat()) == spec and hash(spec) == hash(DataSpec.from_mapping(spec.flat()))
    assert RunConfig(**{k: v for k, v in old.items()}).data_spec == spec
    assert DataSpec.from_mapping({"data": ["/a"]}) == DataSpec(("/a",))  # fields absent from old files: defaults
    assert DataSpec(("/a",), val_fraction=0.6, test_fraction=0.4).problem().startswith("val_fraction")
    assert DataSpec(("/a",), val_fraction=0).problem().startswith("val_fraction 0")
    assert DataSpec(("/a",), split_mode="official", val_fraction=0).problem() is None
    with pytest.raises(ConfigError, match="val_fraction"):
        RunConfig(data=["/a"], val_fraction=0.7, test_fraction=0.3).validate()


def test_a_source_search_passes_by_folders_it_may_not_list(tmp_path, monkeypatch):
    """A source of / meets /proc/1/cwd, which even root may not list: the search for a layout's files skips
    such a folder instead of failing the whole source with a raw errno."""
    import os

    from core.data.storage import Storage
    (tmp_path / "locked").mkdir()
    (tmp_path / "open" / "deeper").mkdir(parents=True)
    (tmp_path / "open" / "deeper" / "labels.csv").write_text("file,label\n")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    storage = Storage.open(tmp_path)
    assert storage.subdirs("locked") == []
    assert storage.find("labels.csv") == "open/deeper"


# ---- damaged zip members, zip bombs and oversized files are skipped with their reason -------------------------

def _set_declared_size(path: Path, member: str, size: int) -> None:
    """Make the central directory lie about a member's uncompressed size (what an attacker controls)."""
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")  # the end-of-central-directory record says where the directory starts
    entry = struct.unpack("<I", raw[end + 16:end + 20])[0]
    while True:
        name_len = struct.unpack("<H", raw[entry + 28:entry + 30])[0]
        if raw[entry + 46:entry + 46 + name_len].decode() == member:
            raw[entry + 24:entry + 28] = struct.pack("<I", size)
            break
        extra_len, comment_len = struct.unpack("<HH", raw[entry + 30:entry + 34])
        entry += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(raw))


def test_a_member_with_a_bad_crc_is_skipped_with_its_reason(tmp_path, capsys):
    from core import evaluate
    path, tiles = synthetic.official_zip(tmp_path / "bad-crc.zip")
    offset = synthetic.zip_data_offset(path, tiles[3]) + 200
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF  # one flipped bit in the middle of a JPEG: only the CRC knows
    path.write_bytes(bytes(raw))
    data = load_dataset([str(path)])
    assert [f for f, _ in data.unreadable] == [f"bad-crc.zip:{tiles[3]}"]
    assert "Bad CRC-32" in data.unreadable[0][1]
    assert len(data.records) == len(tiles) - 1
    assert data_cli(["summary", str(path)]) == 0
    assert "1 unreadable tiles were skipped" in capsys.readouterr().out
    code = evaluate.main(["--checkpoint", str(model_fixtures.tiny_checkpoint()), "--data", str(path), "--split", "all"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_a_zip_bomb_member_is_refused_with_bounded_memory(tmp_path, declared):
    files = synthetic.official_files("3.2", n_obs=6, per_obs=4, augment=(), missing=0)
    bomb = "ESP_010000_2000_RED-0099.jpg"
    files["labels-map-proj_v3_2.txt"] += f"{bomb} 1\n".encode()
    files["labels-map-proj_v3_2_train_val_test.txt"] += f"{bomb} 1 train\n".encode()
    path = synthetic.write_zip(tmp_path / "bomb.zip", files)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(f"map-proj-v3_2/{bomb}", "w") as out:  # 96 MiB of zeros, about 100 KB deflated
        for _ in range(96):
            out.write(bytes(1 << 20))
    if declared == "lying":
        _set_declared_size(path, f"map-proj-v3_2/{bomb}", 4096)  # claims 4 KiB: only a capped read stays bounded
    tracemalloc.start()
    try:
        data = load_dataset([str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reasons = dict(data.unreadable)
    assert list(reasons) == [f"bomb.zip:map-proj-v3_2/{bomb}"]
    assert ("96.0 MiB, over the 64 MiB limit" if declared == "honest" else "Bad CRC-32") in reasons[next(iter(reasons))]
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert len(data.records) == sum(n.endswith(".jpg") for n in files)


def test_an_oversized_file_in_a_folder_is_skipped_unread(tmp_path):
    root = synthetic.write_folder(tmp_path / "v32", synthetic.official_files("3.2", n_obs=6, per_obs=4,
                                                                            augment=(), missing=0))
    victim = sorted((root / "map-proj-v3_2").iterdir())[0]
    with open(victim, "r+b") as f:
        f.truncate(200 * 2**20)  # sparse: costs no disk, would cost 200 MiB to read
    tracemalloc.start()
    try:
        data = load_dataset([str(root)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert [f.split(":", 1)[1] for f, _ in data.unreadable] == [f"map-proj-v3_2/{victim.name}"]
    assert "200.0 MiB, over the 64 MiB limit" in data.unreadable[0][1]


# ---- a labels.csv naming one file twice -----------------------------------------------------------------------

def test_labels_csv_refuses_one_file_with_several_labels(tmp_path):
    root = synthetic.write_plain(tmp_path / "own", n=4)
    rows = (root / "labels.csv").read_text().splitlines()
    name = rows[1].split(",")[0]
    (root / "labels.csv").write_text("\n".join([*rows, f"{name},1", f"{name},2"]) + "\n")
    with pytest.raises(DataError, match=r"labels.csv line 6: tiles/own-0.jpg is labelled crater here and other on "
                                        r"line 2; a file takes one label"):
        read_source(root)
    (root / "labels.csv").write_text("\n".join([*rows, f"{name},other", f"{name},0"]) + "\n")
    src = read_source(root)
    assert len(src.records) == 4 and any("2 files again with the same label" in w for w in src.warnings)


def test_a_folder_the_search_may_not_look_into_is_passed_over(tmp_path, monkeypatch):
    """/proc as a data source: a folder search met '[Errno 13] Permission denied: /proc/1/cwd' and said that,
    a path the user never typed; such a folder is now passed over, and the data is simply not found there."""
    import pathlib

    from core.data.storage import FolderStorage
    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "labels.csv").write_text("file,label\n")
    real = pathlib.Path.is_file

    def is_file(self):
        if "locked" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(pathlib.Path, "is_file", is_file)
    storage = FolderStorage(tmp_path)
    assert storage.find("labels.csv") == "open"
    assert storage.find("missing.csv") is None


def test_an_overrides_file_with_every_override_undone_changes_nothing_and_says_nothing(v32_folder, tmp_path,
                                                                                    monkeypatch):
    empty = tmp_path / "label_overrides.csv"
    empty.write_text("file,label,previous,note\n")
    monkeypatch.setattr("core.settings.LABEL_OVERRIDES_FILE", empty)
    data = load_dataset([v32_folder])
    assert data.overrides is None and not summarize(data).get("label_overrides")


def test_a_symlink_in_a_data_folder_is_not_followed_outside_it(tmp_path):
    """Issue 33: symlinks inside a data folder were followed to files outside it."""
    from core.data import DataSpec, load_dataset
    folder = synthetic.write_folder(tmp_path / "data", synthetic.official_files("3.2", n_obs=6, per_obs=2, missing=0))
    images = next(p for p in folder.rglob("*.jpg")).parent
    victim = sorted(images.glob("*.jpg"))[0]
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside)
    inside = sorted(images.glob("*.jpg"))[1]
    before = load_dataset(DataSpec((str(folder),)))
    assert victim.name not in {r.name for r in before.records}
    assert inside.name in {r.name for r in before.records}
    inside.rename(tmp_path / "moved.jpg")
    inside.symlink_to(images / sorted(p.name for p in images.glob("*.jpg") if p.name != victim.name)[0])
    assert inside.name in {r.name for r in load_dataset(DataSpec((str(folder),))).records}  # a link within is fine


def test_an_empty_or_damaged_zip_is_named_as_such(tmp_path):
    """Browser walk: a 0-byte .zip was called 'neither a folder nor a zip file'."""
    from core.data import DataError
    from core.data.storage import Storage
    (tmp_path / "empty.zip").write_bytes(b"")
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"not a readable zip file \(empty\)"):
        Storage.open(tmp_path / "empty.zip")
    with pytest.raises(DataError, match=r"not a readable zip file \(damaged or not a zip\)"):
        Storage.open(tmp_path / "bad.zip")
