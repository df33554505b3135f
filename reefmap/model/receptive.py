"""Measuring what a network needs around a tile, whatever its architecture: the input size multiple it accepts
and its receptive radius.

The radius is measured, not trusted: one pixel is changed on random backgrounds (an impulse on zeros
under-measures a ReLU network: dead units hide paths), at several positions covering the phases of the
network's down-sampling, and the farthest output pixel that changes at all gives the radius (the base and the
changed input run as two forward passes of the same shape, so an output that does not depend on the pixel comes
back bit-identical; a signal that a randomly initialised network shrinks to 1e-8 still counts). The probes are strips
(long along the measured axis, narrow across it), so that a radius of hundreds of pixels stays cheap on a CPU:
the strip grows until the change no longer reaches its ends.
"""

from __future__ import annotations

from reefmap.errors import ModelError

#: the largest size multiple tried, and the longest strip probed (a radius beyond about half of it is refused)
MAX_SIZE_MULTIPLE = 64
MAX_STRIP = 4096


def round_up(n: int, m: int) -> int:
    return -(-int(n) // int(m)) * int(m)


def _forward(net, x):
    import torch

    with torch.inference_mode():
        return net(x)


def output_shape(net, bands: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
    """The shape of ``net``'s output for a random input ``(batch, bands, height, width)``."""
    import torch

    return tuple(_forward(net, torch.randn(batch, bands, height, width)).shape)


def measure_size_multiple(net, bands: int) -> int:
    """The smallest power of two m such that inputs of two different multiples of m come back at their own size
    (a network that pools k times refuses, or shrinks, other sizes)."""
    for m in (2**i for i in range(MAX_SIZE_MULTIPLE.bit_length())):
        k = max(2, -(-64 // m))
        try:
            if all(output_shape(net, bands, m * j, m * (j + 1))[2:] == (m * j, m * (j + 1)) for j in (k, k + 1)):
                return m
        except Exception:  # noqa: BLE001 - a size the network refuses raises whatever the network raises
            continue
    raise ModelError(f"the network returns no output of its input's size for inputs of any multiple of 1..{MAX_SIZE_MULTIPLE} "
                     "pixels; reefmap needs a segmentation network whose output has the input's height and width")


def _reach(net, bands: int, length: int, breadth: int, multiple: int, trials: int, gen, axis: int) -> int:
    """The farthest row (axis 0) or column (axis 1) from a changed input pixel where the output changes, over
    ``trials`` random strips ``length`` long and ``breadth`` wide."""
    import torch

    shape = (trials, bands, length, breadth) if axis == 0 else (trials, bands, breadth, length)
    x = torch.randn(*shape, generator=gen)
    x2 = x.clone()
    centre = []
    for t in range(trials):  # phases 0 and multiple - 1 first, then random ones
        phase = (0, multiple - 1)[t] if t < 2 else int(torch.randint(multiple, (1,), generator=gen))
        c, across = length // 2 + phase, breadth // 2
        idx = (t, slice(None), c, across) if axis == 0 else (t, slice(None), across, c)
        x2[idx] = x[idx] + 3.0 * torch.randn(bands, generator=gen).sign()
        centre.append(c)
    diff = (_forward(net, x2) - _forward(net, x)).abs()  # same shapes, same batch positions: bit-comparable
    reach = 0
    for t in range(trials):
        changed = diff[t].amax(dim=(0, 2) if axis == 0 else (0, 1)) > 0  # per position along the strip
        where = torch.nonzero(changed).flatten()
        if len(where):
            reach = max(reach, int((where - centre[t]).abs().max()))
    return reach


def measure_receptive_radius(net, bands: int, multiple: int, trials: int = 4, seed: int = 0) -> int:
    """The receptive radius (pixels) of ``net`` (an eval-mode module or exported program taking ``(batch, bands,
    y, x)``, sizes multiples of ``multiple``), measured on random backgrounds along both axes."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    breadth = round_up(max(32, 2 * multiple), multiple)  # an export may refuse a 1-pixel-wide coarsest level
    length = round_up(128, 2 * multiple)
    while True:
        reach = max(_reach(net, bands, length, breadth, multiple, trials, gen, axis) for axis in (0, 1))
        if reach < length // 2 - 2 * multiple:  # the change died out inside the strip
            return reach
        if length >= MAX_STRIP:
            raise ModelError(f"the network's receptive radius exceeds {reach} px (probed up to {length} px): too large "
                             "to tile; give a network with a smaller receptive field")
        length *= 2
