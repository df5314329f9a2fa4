"""The refiner generator, a multi-scale patch discriminator, and losses that need no
downloaded weights. Sized for the live frame budget on a CPU (the model card has its cost), not a leaderboard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IN_CHANNELS = 8  # warped RGB, source RGB, landmark map, fill mask (+ the driver's openings)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class _Res(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(ch, ch, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Refiner(nn.Module):
    """U-Net that predicts a correction to the warped crop plus a blend mask.

    The output is ``warped + delta`` (so colours start right and only what the warp got
    wrong must be learned), and the mask is forced to zero at the crop border so the
    paste-back never shows a seam.

    With ``flow`` it may also move the warp's pixels before recolouring them: a small
    displacement field (at most ``MAX_FLOW`` of the crop, zero at the border) puts a lip
    outline where the target has it, which recolouring alone cannot. The flow is an output
    too, so the runtime can move the full-resolution frame rather than the small crop.

    With ``driver`` it also sees the driver's openings (``realtime.crops.driver_map``):
    teeth or a dark cavity, which the landmarks do not describe.
    """

    MAX_FLOW = 0.08  # of the crop size: 4 px at 48 px, about a lip's thickness

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 96),
        size: int = 128,
        flow: bool = False,
        driver: bool = False,
    ) -> None:
        super().__init__()
        w = widths
        self.flow = flow
        self.driver = driver
        self.enc0 = nn.Sequential(_conv(IN_CHANNELS + int(driver), w[0]), _conv(w[0], w[0]))
        self.enc1 = nn.Sequential(_conv(w[0], w[1], 2), _conv(w[1], w[1]))
        self.enc2 = nn.Sequential(_conv(w[1], w[2], 2), _conv(w[2], w[2]))
        self.enc3 = nn.Sequential(_conv(w[2], w[3], 2), _Res(w[3]), _Res(w[3]))
        self.dec2 = nn.Sequential(_conv(w[3] + w[2], w[2]), _conv(w[2], w[2]))
        self.dec1 = nn.Sequential(_conv(w[2] + w[1], w[1]), _conv(w[1], w[1]))
        self.dec0 = nn.Sequential(_conv(w[1] + w[0], w[0]), _conv(w[0], w[0]))
        self.head = nn.Conv2d(w[0], 6 if flow else 4, 3, 1, 1)
        ramp = torch.clamp(
            torch.minimum(torch.arange(size), torch.arange(size).flip(0)).float() / (size * 0.08), 0, 1
        )
        self.register_buffer("border", (ramp[None, :] * ramp[:, None])[None, None], persistent=False)
        # Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False).
        centres = (torch.arange(size).float() * 2 + 1) / size - 1
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1)[None]
        self.register_buffer("grid", grid, persistent=False)

    def forward(
        self,
        warped: torch.Tensor,
        source: torch.Tensor,
        landmarks: torch.Tensor,
        fill_mask: torch.Tensor,
        driver: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        inputs = [warped, source, landmarks, fill_mask]
        if self.driver:
            if driver is None:
                raise ValueError("this refiner needs the driver's openings (driver=...)")
            inputs.append(driver)
        x = torch.cat(inputs, dim=1) * 2.0 - 1.0
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        d2 = self.dec2(torch.cat([up(e3, e2), e2], 1))
        d1 = self.dec1(torch.cat([up(d2, e1), e1], 1))
        d0 = self.dec0(torch.cat([up(d1, e0), e0], 1))
        out = self.head(d0)
        base = warped
        if self.flow:
            size = warped.shape[-1]
            flow = torch.tanh(out[:, 4:6]) * (self.MAX_FLOW * size) * self.border  # crop pixels
            grid = self.grid + flow.permute(0, 2, 3, 1) * (2.0 / size)
            base = F.grid_sample(warped, grid, mode="bilinear", padding_mode="border", align_corners=False)
        refined = torch.clamp(base + torch.tanh(out[:, :3]), 0.0, 1.0)
        mask = torch.sigmoid(out[:, 3:4]) * self.border
        image = mask * refined + (1.0 - mask) * base
        if self.flow:
            return image, mask, flow
        return image, mask


# How the refiner's convolutions feed each other, for widening: (conv, input spaces, output
# space). A space is a set of channels that must be widened the same way; "in" and "out"
# (the input and output channels) are never widened. The residual blocks' second convs
# write into e3 because their output is added to it.
_REFINER_GRAPH = [
    ("enc0.0.0", ["in"], "a0"),
    ("enc0.1.0", ["a0"], "e0"),
    ("enc1.0.0", ["e0"], "a1"),
    ("enc1.1.0", ["a1"], "e1"),
    ("enc2.0.0", ["e1"], "a2"),
    ("enc2.1.0", ["a2"], "e2"),
    ("enc3.0.0", ["e2"], "e3"),
    ("enc3.1.body.0", ["e3"], "r1"),
    ("enc3.1.body.2", ["r1"], "e3"),
    ("enc3.2.body.0", ["e3"], "r2"),
    ("enc3.2.body.2", ["r2"], "e3"),
    ("dec2.0.0", ["e3", "e2"], "b2"),
    ("dec2.1.0", ["b2"], "d2"),
    ("dec1.0.0", ["d2", "e1"], "b1"),
    ("dec1.1.0", ["b1"], "d1"),
    ("dec0.0.0", ["d1", "e0"], "b0"),
    ("dec0.1.0", ["b0"], "d0"),
    ("head", ["d0"], "out"),
]


def widen_refiner(narrow: dict[str, torch.Tensor], wide: Refiner, noise: float = 0.01, seed: int = 0) -> None:
    """Load the state dict of a narrower Refiner into ``wide`` so that it computes the same
    function (Net2WiderNet, Chen et al. 2016): every new channel copies an old one, and the
    layers reading them share that channel's weights among its copies. A little noise on
    the copies lets them drift apart in training, so the extra width can learn something."""
    generator = torch.Generator().manual_seed(seed)
    wide_state = wide.state_dict()
    mapping: dict[str, torch.Tensor] = {}
    for name, _, out_space in _REFINER_GRAPH:
        old, new = narrow[f"{name}.weight"].shape[0], wide_state[f"{name}.weight"].shape[0]
        if out_space not in mapping:
            if out_space == "out" or new == old:
                mapping[out_space] = torch.arange(new)
            elif new < old:
                raise ValueError(f"{name}: cannot narrow {old} channels to {new}")
            else:
                extra = torch.randint(0, old, (new - old,), generator=generator)
                mapping[out_space] = torch.cat([torch.arange(old), extra])
    mapping["in"] = torch.arange(narrow["enc0.0.0.weight"].shape[1])  # with or without the driver
    for name, in_spaces, out_space in _REFINER_GRAPH:
        weight, bias = narrow[f"{name}.weight"], narrow[f"{name}.bias"]
        out_map = mapping[out_space]
        # Input channels: each copy of an old channel gets an equal share of its weight.
        columns, offset = [], 0
        for space in in_spaces:
            in_map = mapping[space]
            old_width = int(in_map.max()) + 1
            copies = torch.bincount(in_map, minlength=old_width).float()
            columns.append(weight[:, offset + in_map] / copies[in_map][None, :, None, None])
            offset += old_width
        new_weight = torch.cat(columns, 1)[out_map]
        copied = torch.arange(len(out_map)) >= weight.shape[0]
        jitter = noise * new_weight.std() * torch.randn(new_weight.shape, generator=generator)
        new_weight = new_weight + jitter * copied[:, None, None, None]
        wide_state[f"{name}.weight"] = new_weight
        wide_state[f"{name}.bias"] = bias[out_map].clone()
    wide.load_state_dict(wide_state)


def add_flow(plain: dict[str, torch.Tensor], with_flow: Refiner) -> None:
    """Load a Refiner trained without flow into one with it, computing the same function:
    the flow channels of the head start at zero, so nothing moves until training says so."""
    state = dict(plain)
    head = with_flow.head
    state["head.weight"] = torch.cat([plain["head.weight"], torch.zeros_like(head.weight[4:])])
    state["head.bias"] = torch.cat([plain["head.bias"], torch.zeros_like(head.bias[4:])])
    with_flow.load_state_dict(state)


def with_driver_input(plain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a Refiner trained without the driver input, for one with it,
    computing the same function: the first convolution's weights for the new channel are 0."""
    first = plain["enc0.0.0.weight"]
    if first.shape[1] != IN_CHANNELS:
        raise ValueError(
            f"expected a refiner without the driver input ({IN_CHANNELS} channels), got {first.shape[1]}"
        )
    return {**plain, "enc0.0.0.weight": torch.cat([first, torch.zeros_like(first[:, :1])], dim=1)}


class PatchDiscriminator(nn.Module):
    """PatchGAN on (image, landmark map); features are returned for feature matching."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(4, w, 4, 2, 1), nn.LeakyReLU(0.2, True)),
                nn.Sequential(
                    nn.Conv2d(w, w * 2, 4, 2, 1), nn.InstanceNorm2d(w * 2), nn.LeakyReLU(0.2, True)
                ),
                nn.Sequential(
                    nn.Conv2d(w * 2, w * 4, 4, 2, 1), nn.InstanceNorm2d(w * 4), nn.LeakyReLU(0.2, True)
                ),
                nn.Conv2d(w * 4, 1, 3, 1, 1),
            ]
        )

    def forward(self, image: torch.Tensor, landmarks: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([image, landmarks], 1) * 2.0 - 1.0
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, scales: int = 2, width: int = 32) -> None:
        super().__init__()
        self.nets = nn.ModuleList([PatchDiscriminator(width) for _ in range(scales)])

    def forward(self, image: torch.Tensor, landmarks: torch.Tensor) -> list[list[torch.Tensor]]:
        outs = []
        for k, net in enumerate(self.nets):
            if k:
                image = F.avg_pool2d(image, 2)
                landmarks = F.avg_pool2d(landmarks, 2)
            outs.append(net(image, landmarks))
        return outs


def laplacian_loss(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """L1 between Laplacian pyramids: a perceptual-ish sharpness loss with no learned weights."""
    total = a.new_zeros(())
    for _ in range(levels):
        da, db = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        la = a - F.interpolate(da, size=a.shape[-2:], mode="bilinear", align_corners=False)
        lb = b - F.interpolate(db, size=b.shape[-2:], mode="bilinear", align_corners=False)
        total = total + ((la - lb).abs() * weight).mean()
        a, b, weight = da, db, F.avg_pool2d(weight, 2)
    return total


def hinge_d(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake, strict=True))


def hinge_g(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(-f[-1].mean() for f in fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(
        F.l1_loss(f, r.detach())
        for rs, fs in zip(real, fake, strict=True)
        for r, f in zip(rs[:-1], fs[:-1], strict=True)
    )
