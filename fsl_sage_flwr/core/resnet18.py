"""ResNet-18 cut after ``layer2``, the split network of FSL-SAGE on CIFAR."""

from collections import OrderedDict

import torch
from torch import nn

from fsl_sage_flwr.core.split_architecture import InputShape, SplitArchitecture


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or 1x1-projection shortcut (He et al.)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # Bias is dropped because each convolution feeds a BatchNorm that re-centres it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _resnet_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [_BasicBlock(in_channels, out_channels, stride)]
    layers += [_BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _pooled_classifier(in_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
    return [
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(in_features, num_classes)),
    ]


class ResNet18Split(SplitArchitecture):
    """ResNet-18 cut after ``layer2``, as in FSL-SAGE (Nair et al., ICML 2025).

    The reference keeps the ImageNet stem (7x7 stride-2 convolution and max pool)
    on CIFAR's 32x32 images, so the cut activation is 128x4x4 (8 KiB per sample).

    Sizes on 3x32x32 input with 10 classes (parameters / BatchNorm buffer elements):

    - client (stem + layer1 + layer2): 683,072 / 1,930
    - server (layer3 + layer4 + pool + fc): 10,498,570 / 7,690
    - aux ``linear`` (pool + fc): 1,290 / 0
    - aux ``half`` (layer3 with one block + pool + fc): 921,610 / 1,539
    - aux ``default`` (layer3 + pool + fc): 2,102,282 / 2,565
    - aux ``full`` (copy of the server architecture): as the server
    """

    aux_variants = ("linear", "half", "default", "full")
    required_input_shape = (3, 32, 32)

    def build_client(self, input_shape: InputShape) -> nn.Module:
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False),
                bn1=nn.BatchNorm2d(64),
                relu=nn.ReLU(inplace=True),
                maxpool=nn.MaxPool2d(3, 2, 1),
                layer1=_resnet_stage(64, 64, blocks=2, stride=1),
                layer2=_resnet_stage(64, 128, blocks=2, stride=2),
            )
        )

    def build_server(self, num_classes: int) -> nn.Module:
        return nn.Sequential(
            OrderedDict(
                [
                    ("layer3", _resnet_stage(128, 256, blocks=2, stride=2)),
                    ("layer4", _resnet_stage(256, 512, blocks=2, stride=2)),
                    *_pooled_classifier(512, num_classes),
                ]
            )
        )

    def build_aux(self, variant: str, num_classes: int) -> nn.Module:
        if variant == "full":
            return self.build_server(num_classes)
        if variant == "linear":
            return nn.Sequential(OrderedDict(_pooled_classifier(128, num_classes)))
        blocks = {"half": 1, "default": 2}[variant]
        return nn.Sequential(
            OrderedDict(
                [
                    ("layer3", _resnet_stage(128, 256, blocks=blocks, stride=2)),
                    *_pooled_classifier(256, num_classes),
                ]
            )
        )
