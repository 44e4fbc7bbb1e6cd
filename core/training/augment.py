"""Augmentation with torchvision transforms v2, on (1, H, W) uint8 tiles, in the run's chosen mode.

- online: one random composition of the chosen transforms, fresh for every tile every epoch;
- expand: the originals plus one copy per transform, each copy seeing only its own transform;
- official: the data set's own -r90 ... -brt copies, nothing else (handled by record selection);
- official_online: those copies, and the online transforms on top of them;
- none.
MixUp / CutMix are batch options applied after batching. Validation and test are never augmented.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from core.imageio import TILE_SIZE

Transform = Callable[[torch.Tensor], torch.Tensor]


def _v2() -> ModuleType:
    """torchvision's transforms, imported when a transform is made: the registry below is read by the run
    configuration, which the app imports at start-up (torchvision costs about a second)."""
    from torchvision.transforms import v2
    return v2


@dataclass(frozen=True)
class TransformSpec:
    """One transform of the registry: how it is made (for a tile of `size` px, always applied), how often the
    online mode applies it, and whether it runs on whole batches on the device (`BatchAugment`) or per tile."""

    make: Callable[[int], nn.Module]
    online_probability: float
    batched: bool = False


class RandomRot90(nn.Module):
    """Rotate by a random multiple of 90 degrees (no interpolation, no black corners)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(1, 4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1))


#: The transforms a run can choose (the one list: the configuration's choices and the form derive from it).
#: Symmetries fire half the time (rot90 three quarters: one of three turns); brightness and contrast jitter draw
#: factors uniformly in [1 - s, 1 + s] (`JITTER`): the strong jitter reaches the data set's own -brt copies and the
#: exposure differences between observations.
TRANSFORMS: dict[str, TransformSpec] = {
    "hflip": TransformSpec(lambda size: _v2().RandomHorizontalFlip(p=1.0), 0.5, batched=True),
    "vflip": TransformSpec(lambda size: _v2().RandomVerticalFlip(p=1.0), 0.5, batched=True),
    "rot90": TransformSpec(lambda size: RandomRot90(), 0.75, batched=True),
    "rotate": TransformSpec(lambda size: _v2().RandomRotation(degrees=180,
                                                              interpolation=_v2().InterpolationMode.BILINEAR), 0.5),
    "perspective": TransformSpec(lambda size: _v2().RandomPerspective(distortion_scale=0.3, p=1.0), 0.3),
    "color_jitter": TransformSpec(lambda size: _v2().ColorJitter(brightness=0.3, contrast=0.3), 0.5, batched=True),
    "strong_color_jitter": TransformSpec(lambda size: _v2().ColorJitter(brightness=0.6, contrast=0.6), 0.8,
                                         batched=True),
    "blur": TransformSpec(lambda size: _v2().GaussianBlur(kernel_size=5, sigma=(0.1, 1.5)), 0.2),
    "resized_crop": TransformSpec(lambda size: _v2().RandomResizedCrop(size=size, scale=(0.6, 1.0), ratio=(0.9, 1.1),
                                                                       antialias=True), 0.5),
    "erasing": TransformSpec(lambda size: _v2().RandomErasing(p=1.0, scale=(0.02, 0.15), value=0), 0.25,
                             batched=True),
}
ONLINE_PROBABILITY = {name: t.online_probability for name, t in TRANSFORMS.items()}
#: Transforms BatchAugment applies to whole batches as tensor ops (the rest stay per tile, in the loader).
BATCHED = tuple(name for name, t in TRANSFORMS.items() if t.batched)
JITTER = {"color_jitter": 0.3, "strong_color_jitter": 0.6}


def _make(name: str, size: int) -> nn.Module:
    """One transform, always applied (the online mode wraps it in a probability)."""
    return TRANSFORMS[name].make(size)


def online_transform(names: list[str], size: int = TILE_SIZE) -> Transform:
    v2 = _v2()
    return v2.Compose([v2.RandomApply([_make(n, size)], p=ONLINE_PROBABILITY[n]) for n in names])


def expand_copies(names: list[str], size: int = TILE_SIZE) -> list[Transform]:
    return [_make(n, size) for n in names]


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Transform | None:
    """MixUp and/or CutMix over a batch of (images, labels) -> (images, soft labels), or None when off."""
    v2 = _v2()
    options = []
    if mixup_alpha > 0:
        options.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        options.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not options:
        return None
    return options[0] if len(options) == 1 else v2.RandomChoice(options)


def epoch_multiplier(mode: str, names: list[str]) -> int:
    """How many times longer an epoch is than one pass over the originals (the UI says so)."""
    return len(names) + 1 if mode == "expand" else 1




class BatchAugment(nn.Module):
    """The online mode's flips, 90-degree rotations, brightness/contrast and erasing, done on a whole
    (B, 1, H, W) float batch in [0, 1] on its device: every tile draws its own random choices, with the
    same probabilities as `online_transform`, but no per-tile Python or PIL work (airbench-style).
    """

    def __init__(self, names: list[str]):
        super().__init__()
        unknown = set(names) - set(BATCHED)
        if unknown:
            raise ValueError(f"cannot batch {', '.join(sorted(unknown))}")
        self.names = list(names)

    def _pick(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Indices of the tiles that get `name` this time."""
        return (torch.rand(x.shape[0], device=x.device) < ONLINE_PROBABILITY[name]).nonzero().flatten()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augments `x` in place (it is the freshly made float batch) and returns it."""
        if "hflip" in self.names and len(idx := self._pick(x, "hflip")):
            x[idx] = x[idx].flip(-1)
        if "vflip" in self.names and len(idx := self._pick(x, "vflip")):
            x[idx] = x[idx].flip(-2)
        if "rot90" in self.names and x.shape[-1] == x.shape[-2] and len(idx := self._pick(x, "rot90")):
            turns = torch.randint(1, 4, (len(idx),), device=x.device)
            for k in (1, 2, 3):
                sel = idx[turns == k]
                if len(sel):
                    x[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        for name, s in JITTER.items():
            if name in self.names and len(idx := self._pick(x, name)):
                sub = x[idx]
                shape = (len(idx), 1, 1, 1)
                mean = sub.mean(dim=(-2, -1), keepdim=True)
                contrast = torch.empty(shape, device=x.device).uniform_(1 - s, 1 + s)
                brightness = torch.empty(shape, device=x.device).uniform_(1 - s, 1 + s)
                x[idx] = sub.sub_(mean).mul_(contrast).add_(mean).mul_(brightness).clamp_(0, 1)
        if "erasing" in self.names and len(idx := self._pick(x, "erasing")):
            h, w = x.shape[-2:]
            for i in idx.tolist():  # a quarter of the batch: a few slice assignments
                area = float(torch.empty(()).uniform_(0.02, 0.15)) * h * w
                aspect = float(torch.exp(torch.empty(()).uniform_(-1.2, 1.2)))
                eh, ew = min(h, max(1, round((area * aspect) ** 0.5))), min(w, max(1, round((area / aspect) ** 0.5)))
                top, left = int(torch.randint(0, h - eh + 1, ())), int(torch.randint(0, w - ew + 1, ()))
                x[i, :, top:top + eh, left:left + ew] = 0.0
        return x


def split_online(names: list[str]) -> tuple[list[str], list[str]]:
    """(transforms done per batch on the device, transforms done per tile in the loader)."""
    return [n for n in names if n in BATCHED], [n for n in names if n not in BATCHED]
