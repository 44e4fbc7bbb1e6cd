"""Issue 16: features and their cache, the embedding map, the label review, label overrides, the CLI, the page."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.classes import CLASS_NAMES
from core.data import DataError, load_dataset, summarize
from core.data.overrides import Override, OverridesError, parse_overrides, read_overrides, update_overrides
from core.data.records import parse_name
from core.explore import __main__ as cli
from core.explore.embed import embed, is_cached, reduce
from core.explore.features import cache_dir, compute_features, features_key, get_features, kept_tiles
from core.explore.labels import groups_of, review_labels
from core.inference import preprocess
from tests import synthetic
from tests.helpers import run_page

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def data(v32_folder):
    return load_dataset([v32_folder], label_overrides=False)


# ---- features and their cache ---------------------------------------------------------------------------

def test_features_match_the_models_own_logits(tiny, data):
    recs = data.records[:20]
    feats, logits = compute_features(tiny, data, recs, size=tiny.image_size)
    assert feats.shape == (20, tiny.model.fc.in_features)
    with torch.inference_mode():
        expected = tiny.model(preprocess(tiny, data.tiles(recs))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)


def test_feature_cache_hit_and_miss_keys(tiny, data, cache):
    first = get_features(tiny, data, size=32, cache_root=cache)
    assert not first.from_cache and first.features.shape[0] == len(data.records)
    again = get_features(tiny, data, size=32, cache_root=cache)
    assert again.from_cache and again.key == first.key
    np.testing.assert_array_equal(again.features, first.features)
    # another size, another record list: other keys, computed afresh
    assert not get_features(tiny, data, size=48, cache_root=cache).from_cache
    assert features_key(tiny, data, data.records[:-1], 32) != first.key


def test_feature_rate_is_measured_here(tiny, data):
    from dataclasses import replace

    from core.explore.features import measure_rate
    assert measure_rate(tiny, data, size=32, tiles=16) > 0
    with pytest.raises(ValueError, match="too few tiles"):
        measure_rate(tiny, replace(data, records=data.records[:5]), size=32)


def test_a_map_is_cached_before_the_page_can_be_stopped(tiny, data, cache):
    """Streamlit stops a left page at its next call: the reduction's last progress call. The map is kept first."""
    class Left(Exception):
        pass

    def progress(done, total, desc):
        if desc.startswith("reducing") and done == total:
            raise Left
    with pytest.raises(Left):
        embed(tiny, data, "pca", 32, cache_root=cache, on_progress=progress)
    assert embed(tiny, data, "pca", 32, cache_root=cache).from_cache


def test_feature_key_follows_the_checkpoint_bytes(tiny, data, tmp_path):
    import copy
    import shutil
    other = copy.copy(tiny)
    other.path = tmp_path / "copy.pt"
    shutil.copy(tiny.path, other.path)
    assert features_key(other, data, data.records, 32) == features_key(tiny, data, data.records, 32)
    with open(other.path, "ab") as f:
        f.write(b"x")
    assert features_key(other, data, data.records, 32) != features_key(tiny, data, data.records, 32)


def test_a_stopped_feature_pass_goes_on_where_it_stood(tiny, data, cache, monkeypatch):
    import core.explore.features as features_module
    monkeypatch.setattr(features_module, "PART_TILES", 16)
    assert len(data.records) > 48

    class Stopped(Exception):  # what Streamlit raises in a page run when the reader leaves the page
        pass

    def stop_at(limit: int):
        def on_progress(done: int, total: int, desc: str) -> None:
            if done >= limit:
                raise Stopped
        return on_progress

    with pytest.raises(Stopped):  # stopped inside the third part of 16 tiles: the first two are kept
        get_features(tiny, data, size=32, cache_root=cache, on_progress=stop_at(40))
    assert len(list(cache_dir(cache).glob("features-*.parts/*.npz"))) == 2
    assert kept_tiles(tiny, data, 32, cache_root=cache) == 32 and kept_tiles(tiny, data, 48, cache_root=cache) == 0

    computed = []
    real_pass = features_module.predict_features

    def counted(loaded, tiles, *args, **kwargs):
        computed.append(len(tiles))
        return real_pass(loaded, tiles, *args, **kwargs)

    monkeypatch.setattr(features_module, "predict_features", counted)
    seen = []
    resumed = get_features(tiny, data, size=32, cache_root=cache, on_progress=lambda d, t, _: seen.append((d, t)))
    assert sum(computed) == len(data.records) - 32  # only what was not kept
    assert seen[-1] == (len(data.records), len(data.records)) and seen[0][0] <= 32  # one count over the whole pass
    whole, logits = compute_features(tiny, data, data.records, size=32)
    np.testing.assert_allclose(resumed.features, whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(resumed.logits, logits, rtol=1e-4, atol=1e-5)
    assert not list(cache_dir(cache).glob("features-*.parts"))  # the whole file replaces the parts
    assert get_features(tiny, data, size=32, cache_root=cache).from_cache


def test_a_damaged_kept_part_is_computed_again_and_two_sessions_share_a_pass(tiny, data, cache, monkeypatch):
    import threading

    import core.explore.features as features_module
    monkeypatch.setattr(features_module, "PART_TILES", 16)
    whole, _ = compute_features(tiny, data, data.records, size=32)
    parts = cache_dir(cache) / f"features-{features_key(tiny, data, data.records, 32)}.parts"
    parts.mkdir(parents=True)
    (parts / f"{0:08d}-{16:08d}.npz").write_bytes(b"not a zip at all")  # a part cut short by a crash
    (parts / "notes.npz").write_bytes(b"")  # not a part name: ignored
    assert kept_tiles(tiny, data, 32, cache_root=cache) == 16
    results, errors = [], []

    def session():
        try:
            results.append(get_features(tiny, data, size=32, cache_root=cache).features)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    for features in results:
        np.testing.assert_allclose(features, whole, rtol=1e-4, atol=1e-5)
    assert get_features(tiny, data, size=32, cache_root=cache).from_cache


@pytest.mark.parametrize("damage", [b"", b"not a zip at all", None])
def test_corrupt_feature_cache_is_rebuilt(tiny, data, cache, damage):
    first = get_features(tiny, data, size=32, cache_root=cache)
    path = cache_dir(cache) / f"features-{first.key}.npz"
    if damage is None:  # truncated
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(damage)
    again = get_features(tiny, data, size=32, cache_root=cache)
    assert not again.from_cache and "rebuilt" in again.note
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5)
    assert get_features(tiny, data, size=32, cache_root=cache).from_cache


# ---- the map ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["pca", "umap"])
def test_embed_map_and_its_cache(tiny, data, cache, method):
    assert not is_cached(tiny, data, method, 32, cache_root=cache)
    emb = embed(tiny, data, method, size=32, cache_root=cache)
    assert not emb.from_cache
    t = emb.table
    assert len(t) == len(data.records) and np.isfinite(t[["x", "y"]].to_numpy()).all()
    assert set(t["label"]) <= set(CLASS_NAMES) and set(t["split"]) <= {"train", "val", "test"}
    assert t["file"].tolist() == [r.name for r in data.records]
    assert is_cached(tiny, data, method, 32, cache_root=cache)
    assert not is_cached(tiny, data, "tsne", 32, cache_root=cache)
    warm = embed(tiny, data, method, size=32, cache_root=cache)
    assert warm.from_cache and warm.features.from_cache
    np.testing.assert_array_equal(warm.table[["x", "y"]].to_numpy(), t[["x", "y"]].to_numpy())


def test_map_separates_what_the_features_separate():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 64))
    x = np.concatenate([c + rng.normal(0, 1, (40, 64)) for c in centres])
    y = np.repeat(np.arange(3), 40)
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    for method in ("pca", "umap", "tsne"):
        xy = reduce(x, method)
        assert xy.shape == (120, 2)
        assert cross_val_score(KNeighborsClassifier(5), xy, y, cv=4).mean() > 0.95, method


def test_embed_rejects_an_unknown_method(tiny, data, cache):
    with pytest.raises(ValueError, match="unknown method"):
        embed(tiny, data, "mds", size=32, cache_root=cache)


# ---- overrides -------------------------------------------------------------------------------------------

def test_parse_overrides_names_and_ids():
    got = parse_overrides("file,label,previous,note\na.jpg,crater,other,x\nb.jpg,7\n\n")
    assert got["a.jpg"].label == 1 and got["a.jpg"].previous == "other" and got["b.jpg"].label == 7


@pytest.mark.parametrize("text, message", [
    ("name,class\na.jpg,crater\n", "line 1 must be a header"),
    ("file,label\na.jpg,volcano\n", "line 2: unknown label 'volcano'"),
    ("file,label\na.jpg,8\n", "unknown label '8'"),
    ("file,label\n,crater\n", "line 2: empty file name"),
    ("file,label\n../x.jpg,crater\n", "not a plain file name"),
    ("file,label\na.jpg,crater\na.jpg,spider\n", "line 3: a.jpg is overridden twice"),
])
def test_malformed_overrides_say_what_and_where(text, message):
    with pytest.raises(OverridesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_overrides(text)


def test_overrides_apply_when_loading_and_never_move_splits(v32_folder, tmp_path):
    base = load_dataset([v32_folder], label_overrides=False)
    target = next(r for r in base.records if r.label == 0)
    file = tmp_path / "overrides.csv"
    update_overrides([Override(target.name, 5, "other", "test"), Override("nowhere.jpg", 1)], path=file)
    data = load_dataset([v32_folder], label_overrides=file)
    after = {r.name: r for r in data.records}
    assert after[target.name].label == 5
    assert [r.split for r in data.records] == [r.split for r in base.records]
    assert sum(a.label != b.label for a, b in zip(base.records, data.records, strict=True)) == 1
    s = summarize(data)
    assert s["label_overrides"]["changed"] == {target.name: ["other", "impact ejecta"]}
    assert s["label_overrides"]["unmatched"] == ["nowhere.jpg"]
    assert any("name no tile here" in w for w in data.warnings)
    # the original label files are untouched
    assert f"{target.name} 0" in (v32_folder / synthetic.V32["labels"]).read_text()


def test_default_overrides_file_applies_and_a_malformed_one_is_a_clear_error(v32_folder):
    from core.settings import LABEL_OVERRIDES_FILE
    base = load_dataset([v32_folder])
    assert base.overrides is None  # no file: nothing applied
    name = base.records[0].name
    try:
        LABEL_OVERRIDES_FILE.write_text(f"file,label\n{name},spider\n")
        assert {r.name: r.label for r in load_dataset([v32_folder]).records}[name] == 7
        assert load_dataset([v32_folder], label_overrides=False).records[0].label == base.records[0].label
        LABEL_OVERRIDES_FILE.write_text(f"file,label\n{name},volcano\n")
        with pytest.raises(DataError, match="unknown label 'volcano'"):
            load_dataset([v32_folder])
    finally:
        LABEL_OVERRIDES_FILE.unlink(missing_ok=True)


def test_missing_named_overrides_file_is_an_error(v32_folder, tmp_path):
    with pytest.raises(DataError, match="label overrides file not found"):
        load_dataset([v32_folder], label_overrides=tmp_path / "none.csv")


def test_update_overrides_from_many_threads_loses_nothing(tmp_path):
    file = tmp_path / "o.csv"
    threads = [threading.Thread(target=update_overrides, args=([Override(f"t{i}.jpg", i % 8)],), kwargs={"path": file})
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_overrides(file)) == sorted(f"t{i}.jpg" for i in range(16))
    update_overrides(remove=["t0.jpg"], path=file)
    assert "t0.jpg" not in read_overrides(file)
    assert not list(tmp_path.glob("*.tmp"))


def test_update_never_overwrites_a_malformed_file(tmp_path):
    file = tmp_path / "o.csv"
    file.write_text("what,ever\n1,2\n")
    with pytest.raises(OverridesError):
        update_overrides([Override("a.jpg", 1)], path=file)
    assert file.read_text() == "what,ever\n1,2\n"


# ---- label review ----------------------------------------------------------------------------------------

def test_review_finds_flipped_labels_in_separable_features():
    """Features that separate the classes; 10 labels flipped: the review must flag most of them."""
    from core.data import Record
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 60)
    centres = rng.normal(0, 4, (4, 32))
    x = centres[labels] + rng.normal(0, 1, (240, 32))
    flipped = rng.choice(240, 10, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 4
    recs = [Record("s", f"{i}.jpg", f"ESP_{i % 12:06d}_0000_RED-{i:04d}.jpg", int(g), "train",
                   observation=f"ESP_{i % 12:06d}_0000_RED") for i, g in enumerate(given)]
    review = review_labels(recs, x)
    found = set(review.issues.tolist())
    assert len(found & set(flipped.tolist())) >= 8
    assert len(found - set(flipped.tolist())) <= 5
    s = review.suspects
    assert list(s.columns[:7]) == ["rank", "file", "landmark", "given", "suggested", "p_suggested", "p_given"]
    top = s.iloc[0]
    assert top["given"] != top["suggested"]
    i = int(top["file"].split("-")[1].split(".")[0])
    assert CLASS_NAMES[labels[i]] == top["suggested"]  # the suggestion is the true class
    assert review.trustworthy and review.judge_macro_f1 > 0.8
    low, high = review.judge_interval  # with its bootstrap interval over observations (browser walk)
    assert low - 1e-4 <= review.judge_macro_f1 <= high + 1e-4
    # features that cannot tell the classes apart: the review says its doubts mean little
    noise = review_labels(recs, rng.normal(0, 1, (240, 32)))
    assert not noise.trustworthy and noise.judge_macro_f1 < 0.5


def test_review_names_a_class_seen_in_too_few_observations_and_leaves_it_out():
    """A class from one observation: the head scoring that observation's fold never saw it, so all its tiles look
    wrong. The review must say so by name and keep them out of the suspects, not blame the features."""
    from core.data import Record
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 60)
    x = rng.normal(0, 0.3, (180, 16))
    x[np.arange(180), labels] += 3  # separable features
    obs = [f"ESP_{i % 12:06d}_0000_RED" for i in range(120)] + ["ESP_999999_0000_RED"] * 60  # class 2: one observation
    recs = [Record("s", f"{i}.jpg", f"t-{i:04d}.jpg", int(c), "train", observation=o)
            for i, (c, o) in enumerate(zip(labels, obs, strict=True))]
    review = review_labels(recs, x)
    assert review.unjudged == {CLASS_NAMES[2]: (60, 1)}
    assert not set(review.suspects["given"]) & {CLASS_NAMES[2]}
    assert review.trustworthy, review.judge_macro_f1  # scored on the classes it could judge
    assert CLASS_NAMES[2] in review.unjudged_text() and "1 observation" in review.unjudged_text()
    judged_everything = review_labels(recs[:120], x[:120])
    assert judged_everything.unjudged == {} and judged_everything.unjudged_text() == ""


def test_review_bad_inputs():
    from core.data import Record
    recs = [Record("s", f"{i}.jpg", f"{i}.jpg", 0) for i in range(5)]
    with pytest.raises(ValueError, match="one class only"):
        review_labels(recs, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="5 records but 4"):
        review_labels(recs, np.zeros((4, 3)))
    two = [Record("s", f"{i}.jpg", f"{i}.jpg", i % 2, observation="ESP_000001_0000_RED") for i in range(6)]
    with pytest.raises(ValueError, match="at least 2"):
        review_labels(two, np.zeros((6, 3)))


def test_groups_are_observations_and_nameless_tiles_stand_alone():
    from core.data import Record
    recs = [Record("s", "a", "a", 0, observation="O1"), Record("s", "b", "b", 0, observation="O1"),
            Record("s", "c", "c", 0), Record("s", "d", "d", 0)]
    g = groups_of(recs)
    assert g[0] == g[1] and len({g[1], g[2], g[3]}) == 3


# ---- the CLI ---------------------------------------------------------------------------------------------

def test_cli_embed_and_labels(tiny, v32_folder, tmp_path, capsys):
    out = tmp_path / "map.csv"
    assert cli.main(["embed", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--size", "32",
                     "--method", "pca", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert {"x", "y", "file", "label", "predicted", "confidence", "split", "observation"} <= set(table.columns)
    assert "tiles mapped (pca" in capsys.readouterr().out
    assert cli.main(["embed", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--size", "32",
                     "--method", "pca", "--out", str(out)]) == 0
    assert "features cached, map cached" in capsys.readouterr().out
    suspects = tmp_path / "suspects.csv"
    assert cli.main(["labels", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--size", "32",
                     "--folds", "3", "--out", str(suspects)]) == 0
    s = pd.read_csv(suspects)
    assert list(s.columns[:7]) == ["rank", "file", "landmark", "given", "suggested", "p_suggested", "p_given"]
    assert "suspect label(s) among" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/data"], "data path not found"),
    (["--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
])
def test_cli_bad_inputs_are_one_line_errors(tiny, v32_folder, tmp_path, capsys, args, message):
    base = {"--data": str(v32_folder), "--checkpoint": str(tiny.path)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["embed", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "m.csv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_out_folder_and_bad_numbers(tiny, v32_folder, tmp_path, capsys):
    assert cli.main(["embed", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    for bad in (["--size", "8"], ["--size", "big"], ["--method", "mds"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["embed", "--data", str(v32_folder), *bad, "--out", str(tmp_path / "m.csv")])
        assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["labels", "--data", str(v32_folder), "--folds", "1", "--out", str(tmp_path / "s.csv")])


def test_cli_malformed_overrides_file(tiny, v32_folder, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.jpg,volcano\n")
    monkeypatch.setattr("core.settings.LABEL_OVERRIDES_FILE", bad)
    assert cli.main(["embed", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--out",
                     str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "unknown label 'volcano'" in err and "line 2" in err
    assert cli.main(["embed", "--data", str(v32_folder), "--checkpoint", str(tiny.path), "--size", "32", "--method",
                     "pca", "--no-label-overrides", "--out", str(tmp_path / "m.csv")]) == 0


# ---- real tiles ------------------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.timeout(1500)  # about 300 tiles through EfficientNet-Lite2 at 260 px: ~20 s idle, minutes when busy
def test_review_recalls_flipped_real_labels(shared_data, tmp_path):
    """5% of one real source's labels flipped on purpose (through an overrides file: the data stay untouched).
    The review must flag at least half of them (about 300 tiles); how many unflipped tiles it flags is printed for the record."""
    from core.checkpoint import load_checkpoint
    source = shared_data / "hirise-v3-subset"
    clean = load_dataset([source], label_overrides=False)
    rng = np.random.default_rng(16)
    observations = sorted({r.observation for r in clean.records if r.observation})
    chosen, count = set(), 0
    for obs in rng.permutation(observations):  # whole observations, about 300 tiles: a modest runtime
        if count >= 300:
            break
        chosen.add(obs)
        count += sum(r.observation == obs for r in clean.records)
    subset = [i for i, r in enumerate(clean.records) if r.observation in chosen]
    flip = rng.choice(subset, max(1, len(subset) // 20), replace=False)
    overrides = [Override(clean.records[i].name, int((clean.records[i].label + rng.integers(1, 8)) % 8))
                 for i in flip]
    file = tmp_path / "flips.csv"
    update_overrides(overrides, path=file)
    noisy = load_dataset([source], label_overrides=file)
    assert len(noisy.overrides.changed) == len(flip)
    records = [noisy.records[i] for i in subset]
    feats = get_features(load_checkpoint(), noisy, records)  # the model's own input size; cached per session
    review = review_labels(feats.records, feats.features)
    flagged = {feats.records[i].name for i in review.issues}
    flipped = set(noisy.overrides.changed)
    recall = len(flagged & flipped) / len(flipped)
    extra = len(flagged - flipped)
    n = len(subset)
    print(json.dumps({"tiles": n, "flipped": len(flipped), "flagged": len(flagged), "recall": round(recall, 3),
                      "flagged_not_flipped": extra}))
    assert recall >= 0.5, (recall, extra)


# ---- the page --------------------------------------------------------------------------------------------

def test_explore_page_draws_a_map_and_reviews(v32_folder, tmp_path):
    from core.settings import APP_STATE_FILE, LABEL_OVERRIDES_FILE, LABEL_REJECTIONS_FILE
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(v32_folder)]}))
    try:
        at = run_page("views/explore.py", timeout=300)
        next(s for s in at.selectbox if s.label == "Reduction").set_value("pca")
        next(s for s in at.selectbox if s.label == "Feature pass input").set_value(128)
        at.run()
        next(b for b in at.button if b.label == "Draw the map").click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("tiles · PCA" in c.value for c in at.caption)
        next(b for b in at.button if b.label == "Run the label review").click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("suspect tiles among" in m.value for m in at.markdown)
        accept = [b for b in at.button if b.label == "Accept"]
        assert accept, "the review flagged nothing on the synthetic set"
        if accept[0].disabled:  # weak judging heads: accepting needs the explicit checkbox
            next(c for c in at.checkbox if c.label == "Let me accept suggestions anyway").check()
            at.run()
            accept = [b for b in at.button if b.label == "Accept"]
            assert not accept[0].disabled
        first = next(m.value for m in at.markdown if m.value.startswith("**#1**"))
        first_file = first.split("`")[1]
        data = load_dataset([v32_folder], label_overrides=False)
        head = next(r for r in data.records if r.name == first_file)
        copies = {r.name for r in data.records if r.landmark == head.landmark and r.label == head.label}
        accept[0].click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        written = read_overrides(LABEL_OVERRIDES_FILE)
        assert set(written) == copies and first_file in copies  # the landmark's tiles, decided together
        assert any(f"{len(copies)} label(s) changed" in c.value for c in at.caption)  # the data was reloaded
        numbers = [int(m.value[3:].split("*")[0]) for m in at.markdown if m.value.startswith("**#")]
        assert numbers == list(range(1, len(numbers) + 1)), numbers  # landmarks numbered without gaps
        reject = [b for b in at.button if b.label == "Reject"]
        if reject:  # a rejection is kept in its file (a refresh keeps it), listed, and can be undone
            second_file = next(m.value for m in at.markdown if m.value.startswith("**#1**")).split("`")[1]
            reject[0].click()
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            kept = read_overrides(LABEL_REJECTIONS_FILE)
            assert second_file in kept and "rejected" in kept[second_file].note
            assert not any(m.value.startswith("**#") and f"`{second_file}`" in m.value for m in at.markdown)
            next(m for m in at.multiselect if m.label == "Undo rejected suggestion(s)").set_value([second_file])
            at.run()
            next(b for b in at.button if b.label.startswith("Undo the ")).click()
            at.run()
            landmark = parse_name(second_file).landmark  # the landmark's copies are undone with it, never split
            assert not [f for f in read_overrides(LABEL_REJECTIONS_FILE) if parse_name(f).landmark == landmark]
            assert any(f"`{second_file}`" in m.value for m in at.markdown)  # asked again
        at.switch_page("views/dataset.py")
        at.run()
        assert any(f"{len(copies)} label(s) changed" in i.value for i in at.info)  # and the data summary shows it
    finally:
        Path(APP_STATE_FILE).unlink(missing_ok=True)
        LABEL_OVERRIDES_FILE.unlink(missing_ok=True)
        LABEL_REJECTIONS_FILE.unlink(missing_ok=True)


def test_explore_page_without_data(monkeypatch):
    from core.settings import APP_STATE_FILE
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": []}))
    monkeypatch.setattr("ui.appstate.SHARED_DATA_DIR", Path("/nonexistent"))
    try:
        at = run_page("views/explore.py", timeout=300)
        assert any("No data set chosen yet" in i.value for i in at.info)
    finally:
        Path(APP_STATE_FILE).unlink(missing_ok=True)


def test_explore_page_with_a_malformed_overrides_file(v32_folder):
    from core.settings import APP_STATE_FILE, LABEL_OVERRIDES_FILE
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(v32_folder)]}))
    LABEL_OVERRIDES_FILE.write_text("file,label\nx.jpg,volcano\n")
    try:
        at = run_page("views/explore.py", timeout=300)
        errors = " ".join(e.value for e in at.error)
        assert "unknown label 'volcano'" in errors and "line 2" in errors
        assert LABEL_OVERRIDES_FILE.read_text() == "file,label\nx.jpg,volcano\n"
    finally:
        LABEL_OVERRIDES_FILE.unlink(missing_ok=True)
        Path(APP_STATE_FILE).unlink(missing_ok=True)


@pytest.mark.parametrize("content", ["file,label\nx.jpg,volcano\n", "\x00\xff garbage", "no header at all\n"])
def test_explore_page_with_a_malformed_rejections_file(v32_folder, content):
    """The rejections file (empty, corrupt, wrong): one clear line, and the file is left exactly as it was."""
    from core.settings import APP_STATE_FILE, LABEL_REJECTIONS_FILE
    Path(APP_STATE_FILE).write_text(json.dumps({"data_paths": [str(v32_folder)]}))
    LABEL_REJECTIONS_FILE.write_text(content)
    try:
        at = run_page("views/explore.py", timeout=300)
        assert not at.exception and any("A label-review file is malformed" in e.value for e in at.error)
        assert LABEL_REJECTIONS_FILE.read_text() == content
    finally:
        LABEL_REJECTIONS_FILE.unlink(missing_ok=True)
        Path(APP_STATE_FILE).unlink(missing_ok=True)


def test_rejections_from_two_threads_both_land(tmp_path):
    """Two sessions rejecting at once (threads of one process): both decisions are kept."""
    path = tmp_path / "label_rejections.csv"
    threads = [threading.Thread(target=update_overrides, args=([Override(f"t{i}-{k}.jpg", 1, "crater", "rejected")
                                                                  for k in range(20)],), kwargs={"path": path})
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_overrides(path)) == 40


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_explore_smoke(shared_data):
    import subprocess
    import sys

    from core.settings import PROJECT_ROOT
    res = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "bench_explore.py"), "--data",
                          str(shared_data / "hirise-v3-subset"), "--max-tiles", "20", "--baseline-tiles", "8",
                          "--method", "pca", "--size", "64"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "BASELINE" in res.stdout and "OURS" in res.stdout and "ratio" in res.stdout and "warm total" in res.stdout
