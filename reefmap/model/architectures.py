"""The built-in network architectures a ``state_dict`` bundle can name, in plain torch.

- ``tiny_unet`` (``in_channels``, ``classes``, ``base``, ``levels``): the demo model's small UNet;
- ``resnet34_unet`` (``in_channels``, ``classes``, ``width`` = 64): a UNet on a ResNet-34 encoder (the layout of
  segmentation_models_pytorch's ``Unet("resnet34")``: 7x7 stem, max-pool, 3-4-6-3 basic blocks, decoder 256-128-
  64-32-16 at width 64), written here without torchvision and without pretrained weights, so that benchmarks and
  training have a realistic model class.

``analytic_receptive_radius`` gives the radius an architecture's layers allow (an upper bound of what
``reefmap.model.receptive`` measures), ``size_multiple`` the input size multiple it needs. torch is imported
inside the functions only.
"""

from __future__ import annotations

from reefmap.errors import ModelError

ARCHITECTURES = ("tiny_unet", "resnet34_unet")
RESNET34_BLOCKS = (3, 4, 6, 3)


def _name(architecture: dict) -> str:
    name = architecture.get("name")
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; this reefmap builds {', '.join(ARCHITECTURES)} from a "
                         "state_dict: export other networks with torch.export.save (.pt2) or torch.jit.save instead")
    return name


def size_multiple(architecture: dict) -> int:
    """The multiple of the input height and width the architecture needs (its total down-sampling)."""
    return 2 ** int(architecture["levels"]) if _name(architecture) == "tiny_unet" else 32


def analytic_receptive_radius(architecture: dict) -> int:
    """The receptive radius (pixels) the architecture's layers allow: a k x k convolution at stride s adds
    (k // 2) * s, a max-pool its extent, a 2x nearest up-sampling one pixel of the finer stride (its phase)."""
    if _name(architecture) == "tiny_unet":
        levels, r = int(architecture["levels"]), 0
        for d in range(levels):  # encoder block at depth d (two 3x3 convs), then a 2x2 max-pool
            r += 2 * 2**d + 2**d
        r += 2 * 2**levels  # bottleneck
        for d in reversed(range(levels)):  # 2x up-sampling (+ a 1x1 conv), then a decoder block at depth d
            r += 2**d + 2 * 2**d
        return r
    r = 3 + 1 * 2  # 7x7 stride-2 stem; 3x3 stride-2 max-pool at stride 2
    stride = 4
    for i, n in enumerate(RESNET34_BLOCKS):  # each basic block: two 3x3 convs (the first strided from layer2 on)
        r += 2 * n * stride if i == 0 else stride + (2 * n - 1) * 2 * stride
        stride = stride if i == 0 else 2 * stride
    while stride > 1:  # decoder: 2x up-sampling, then two 3x3 convs at the finer stride
        stride //= 2
        r += stride + 2 * stride
    return r + 1  # 3x3 head


def build_network(architecture: dict):
    """The torch module for an architecture dict, e.g. ``{"name": "tiny_unet", "in_channels": 3, "classes": 5,
    "base": 8, "levels": 2}`` or ``{"name": "resnet34_unet", "in_channels": 4, "classes": 9}``."""
    a = architecture
    try:
        if _name(a) == "tiny_unet":
            return _tiny_unet(int(a["in_channels"]), int(a["classes"]), int(a["base"]), int(a["levels"]))
        return _resnet34_unet(int(a["in_channels"]), int(a["classes"]), int(a.get("width", 64)))
    except KeyError as e:
        raise ModelError(f"architecture {a!r} lacks parameter {e}") from None


def _tiny_unet(in_channels: int, classes: int, base: int, levels: int):
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(o, o, 3, padding=1), nn.ReLU(inplace=True))

    class TinyUNet(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [base * 2**i for i in range(levels + 1)]
            self.down = nn.ModuleList()
            c = in_channels
            for ch in chans[:-1]:
                self.down.append(block(c, ch))
                c = ch
            self.mid = block(c, chans[-1])
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            for ch in reversed(chans[:-1]):
                self.up.append(nn.Conv2d(ch * 2, ch, 1))
                self.dec.append(block(ch * 2, ch))
            self.head = nn.Conv2d(chans[0], classes, 1)

        def forward(self, x):
            skips = []
            for blk in self.down:
                x = blk(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.mid(x)
            for up, dec, s in zip(self.up, self.dec, reversed(skips)):
                x = up(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
                x = dec(torch.cat([x, s], 1))
            return self.head(x)

    return TinyUNet()


def _resnet34_unet(in_channels: int, classes: int, width: int):
    import torch
    from torch import nn

    def conv_bn_relu(i, o, stride=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class BasicBlock(nn.Module):
        def __init__(self, i, o, stride):
            super().__init__()
            self.conv1 = conv_bn_relu(i, o, stride)
            self.conv2 = nn.Sequential(nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
            self.downsample = (nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                               if stride != 1 or i != o else nn.Identity())

        def forward(self, x):
            return torch.relu(self.conv2(self.conv1(x)) + self.downsample(x))

    class DecoderBlock(nn.Module):
        def __init__(self, i, skip, o):
            super().__init__()
            self.conv = nn.Sequential(conv_bn_relu(i + skip, o), conv_bn_relu(o, o))

        def forward(self, x, skip=None):
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x if skip is None else torch.cat([x, skip], 1))

    class ResNet34UNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            chans = (w, 2 * w, 4 * w, 8 * w)
            self.layers = nn.ModuleList()
            c = w
            for i, (o, n) in enumerate(zip(chans, RESNET34_BLOCKS)):
                self.layers.append(nn.Sequential(*[BasicBlock(c if j == 0 else o, o, 2 if (i and j == 0) else 1) for j in range(n)]))
                c = o
            dec = (4 * w, 2 * w, w, w // 2, w // 4)
            skips = (4 * w, 2 * w, w, w, 0)  # layer3, layer2, layer1, stem, none
            ins = (8 * w, *dec[:-1])
            self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, dec))
            self.head = nn.Conv2d(dec[-1], classes, 3, padding=1)

        def forward(self, x):
            f1 = self.stem(x)
            x = torch.nn.functional.max_pool2d(f1, 3, 2, 1)
            feats = [f1]
            for layer in self.layers:
                x = layer(x)
                feats.append(x)
            skips = [feats[3], feats[2], feats[1], feats[0]]  # layer3, layer2, layer1, stem
            for i, block in enumerate(self.decoder):
                x = block(x, skips[i] if i < len(skips) else None)
            return self.head(x)

    return ResNet34UNet()
