"""A small split CNN for 1-channel images, in the proportions of FSL-SAGE's ResNet-18."""

from torch import nn

from fsl_sage_flwr.core.split_architecture import InputShape, SplitArchitecture


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallSplitCNN(SplitArchitecture):
    """Small split CNN for 1-channel images, in the proportions of FSL-SAGE's ResNet-18.

    Mirrors the paper's split (Nair et al., ICML 2025) at toy scale: a thin client
    (two conv blocks, each halving the image), a server about 366x larger, and aux
    heads that are cheap prefixes of the server. Takes any 1-channel ``(1, H, W)``
    input with ``H, W >= 4``; the cut is ``16 x H//4 x W//4``, and the server's
    ceil-mode pool keeps a 1x1 or 2x2 cut usable.

    Sizes with 10 classes, independent of H and W (parameters / BatchNorm buffer
    elements):

    - client: 2,544 / 66
    - server: 931,530 / 1,155
    - aux ``linear``: 170 / 0; ``half``: 10,058 / 129; ``default``: 84,810 / 386;
      ``full``: as the server

    Cut shape: 16x2x2 on 8x8 input (256 B per sample, fp32), 16x7x7 on 28x28
    (3,136 B per sample), against 3,736,296 B for client + server parameters.
    """

    aux_variants = ("linear", "half", "default", "full")

    @classmethod
    def check_input_shape(cls, name: str, input_shape: InputShape) -> None:
        channels, height, width = input_shape
        # Two 2x2 max pools on the client must leave at least one pixel.
        if channels != 1 or height < 4 or width < 4:
            raise ValueError(f"model {name!r} needs input shape (1, H, W) with H, W >= 4, got {tuple(input_shape)}")

    def build_client(self, input_shape: InputShape) -> nn.Module:
        return nn.Sequential(
            *_conv_bn_relu(input_shape[0], 16),
            nn.MaxPool2d(2),
            *_conv_bn_relu(16, 16),
            nn.MaxPool2d(2),
        )

    def build_server(self, num_classes: int) -> nn.Module:
        return nn.Sequential(
            *_conv_bn_relu(16, 64),
            *_conv_bn_relu(64, 128),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(128, 384),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(384, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def build_aux(self, variant: str, num_classes: int) -> nn.Module:
        if variant == "full":
            return self.build_server(num_classes)
        widths = {"linear": [16], "half": [16, 64], "default": [16, 64, 128]}[variant]
        convs = [m for c_in, c_out in zip(widths, widths[1:]) for m in _conv_bn_relu(c_in, c_out)]
        return nn.Sequential(
            *convs,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )
