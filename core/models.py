"""Model zoo, grayscale stems, ImageNet weights (offline-aware), freezing and Grad-CAM target layers."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "wide_resnet50_2")
ARCHITECTURES = (*TORCHVISION_ARCHS, "simple_cnn")
RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
CNN_STAGES = ("block1", "block2", "block3", "fc")
FREEZE_MODES = ("none", "head_only", "below")  # below: everything below `freeze_below` stays frozen


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are not in the local torch cache and cannot be downloaded."""


class SimpleCNN(nn.Module):
    """The reference projects' small baseline: three conv blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int = 8, in_chans: int = 1, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.block1 = block(in_chans, width)
        self.block2 = block(width, width * 2)
        self.block3 = block(width * 2, width * 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def stages(arch: str) -> tuple[str, ...]:
    """Names of the model's top-level stages, input to output (what freezing refers to)."""
    return CNN_STAGES if arch == "simple_cnn" else RESNET_STAGES


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for the ImageNet weights of `arch` (the local torch hub cache)."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def imagenet_status(arch: str) -> tuple[bool, str]:
    """(available, sentence) for showing in the app and the CLI before anything starts."""
    if arch not in TORCHVISION_ARCHS:
        return False, f"{arch} has no ImageNet weights; it trains from scratch"
    path = imagenet_weights_file(arch)
    if path.is_file():
        return True, f"ImageNet weights found at {path}"
    return False, (f"ImageNet weights for {arch} are not in the local cache: missing {path}. Download "
                   f"{imagenet_weights(arch).url} and put the file there, or train from scratch")


def fetch_imagenet_weights(arch: str, url: str | None = None, progress: bool = True) -> Path:
    """Download the weights into the torch cache, checking torchvision's hash prefix in the file name."""
    path = imagenet_weights_file(arch)
    if path.is_file():
        return path
    url = url or imagenet_weights(arch).url
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = path.stem.rsplit("-", 1)[-1]
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, hash mismatch: all mean "not available"
        path.unlink(missing_ok=True)
        raise WeightsUnavailable(f"could not download {url} ({exc}); {imagenet_status(arch)[1]}") from exc
    return path


def build_model(arch: str, num_classes: int = 8, pretrained: bool = False) -> nn.Module:
    """A model that takes (B, 1, H, W) normalised grayscale tiles.

    Pretrained stems get their RGB conv1 kernels summed into one channel: exactly what repeating
    the grayscale tile to three channels would compute, at a third of the stem's cost. From
    scratch, the stem simply has one input channel. Training and inference share this model.
    """
    if arch == "simple_cnn":
        if pretrained:
            raise WeightsUnavailable("simple_cnn has no ImageNet weights")
        return SimpleCNN(num_classes)
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown model {arch!r} (expected one of {', '.join(ARCHITECTURES)})")
    model = torchvision.models.get_model(arch, weights=None)
    if pretrained:
        available, message = imagenet_status(arch)
        if not available:
            raise WeightsUnavailable(message)
        model.load_state_dict(torch.load(imagenet_weights_file(arch), map_location="cpu", weights_only=True))
    rgb = model.conv1
    gray = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=False)
    if pretrained:
        with torch.no_grad():
            gray.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
    model.conv1 = gray
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def set_frozen(model: nn.Module, arch: str, frozen: Sequence[str]) -> None:
    """Freeze the named stages (no gradients, BatchNorm statistics fixed) and unfreeze the rest."""
    unknown = set(frozen) - set(stages(arch))
    if unknown:
        raise ValueError(f"{arch} has no stage {', '.join(sorted(unknown))} (stages: {', '.join(stages(arch))})")
    for name in stages(arch):
        module = getattr(model, name)
        for p in module.parameters():
            p.requires_grad_(name not in frozen)


def frozen_stages(arch: str, mode: str, below: str | None = None) -> list[str]:
    """The stages a freezing policy keeps frozen: none, all but the head, or all below a stage."""
    names = list(stages(arch))
    if mode == "none":
        return []
    if mode == "head_only":
        return names[:-1]
    if mode == "below":
        if below not in names:
            raise ValueError(f"freeze_below must be one of {', '.join(names)} for {arch}, got {below!r}")
        return names[: names.index(below)]
    raise ValueError(f"unknown freeze mode {mode!r} (expected one of {', '.join(FREEZE_MODES)})")


def unfrozen_after(arch: str, initially_frozen: Sequence[str], epoch: int, every: int) -> list[str]:
    """Gradual unfreezing: after every `every` epochs one more stage (from the top) is released."""
    if every <= 0:
        return list(initially_frozen)
    release = epoch // every
    ordered = [s for s in stages(arch) if s in initially_frozen]
    return ordered[: max(0, len(ordered) - release)]


def freeze_batchnorm_of_frozen(model: nn.Module, arch: str, frozen: Sequence[str]) -> None:
    """Keep BatchNorm layers of frozen stages in eval mode while the model trains."""
    for name in frozen:
        for m in getattr(model, name).modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def default_cam_layer(arch: str) -> str:
    """The layer Grad-CAM hooks by default: the last block before global pooling."""
    return "block3" if arch == "simple_cnn" else "layer4"


def get_layer(model: nn.Module, dotted: str) -> nn.Module:
    """`layer4`, `layer4.1`, `layer4.1.conv2` ... -> the module, or ValueError naming what exists."""
    module = model
    for part in dotted.split("."):
        children = dict(module.named_children())
        if part not in children:
            raise ValueError(f"no layer {dotted!r}; {part!r} is not one of {', '.join(children)}")
        module = children[part]
    return module
