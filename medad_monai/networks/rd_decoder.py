"""Reverse-distillation student decoder (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022, Sec. 3.1 / Fig. 2; official ``de_resnet.py::de_wide_resnet50_2``).

The decoder mirrors the teacher's ResNet stages in reverse: each stage starts with a "de-bottleneck" block whose
3x3 convolution is replaced by a 2x2 stride-2 transposed convolution (and whose shortcut is a 2x2 stride-2
transposed convolution + BatchNorm), which doubles the resolution and halves the channels. With the default
configuration (``de_wide_resnet50_2``): ``2048@s -> 1024@2s (3 blocks) -> 512@4s (4 blocks) -> 256@8s (6 blocks)``,
bottleneck width ``planes * width_per_group / 64`` with ``width_per_group=128``.

D²4FAD (Dong et al., ICLR 2026, official ``main.py``) uses exactly this decoder on the teacher's ``layer4`` output,
without RD's one-class bottleneck embedding (OCBE).
"""

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["DeBottleneck", "ReverseDistillationDecoder"]


class DeBottleneck(nn.Module):
    """Bottleneck block of the RD decoder (official ``de_resnet.py::Bottleneck``).

    ``conv1`` 1x1 -> ``conv2`` (2x2 stride-2 transposed conv when ``stride == 2``, else 3x3) -> ``conv3`` 1x1
    (``planes * 4`` outputs), each followed by BatchNorm, ReLU after the residual sum. Attribute names follow the
    official code (``upsample`` is the shortcut) so its checkpoints map one-to-one.

    Args:
        in_channels: input channels.
        planes: bottleneck planes; the block outputs ``planes * expansion`` channels.
        stride: 2 to upsample by two, 1 otherwise.
        upsample: shortcut applied to the input when the shape changes (``None`` = identity).
        width_per_group: 64 for ResNet, 128 for wide ResNets.
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        upsample: nn.Module | None = None,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DeBottleneck: stride must be 1 or 2, got {stride}")
        width = int(planes * (width_per_group / 64.0))
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if stride == 2:
            self.conv2: nn.Module = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.upsample is not None:
            identity = self.upsample(x)
        return self.relu(out + identity)


class ReverseDistillationDecoder(nn.Module):
    """Student decoder of reverse distillation, returning features in teacher order (shallow to deep).

    Args:
        in_channels: channels of the embedding fed to the decoder (2048 = WRN50-2 ``layer4`` / RD's OCBE output).
        num_blocks: blocks per stage, deepest stage first (RD ``de_wide_resnet50_2``: ``(3, 4, 6)``). Stage ``i``
            outputs ``in_channels // 2**(i + 1)`` channels at twice the resolution of its input.
        width_per_group: bottleneck width factor (128 = wide, 64 = plain ResNet-50 decoder).

    ``forward(x, priors)`` returns ``[f_shallow, ..., f_deep]``; with the defaults at input ``2048 x s x s`` that is
    ``[256 x 8s x 8s, 512 x 4s x 4s, 1024 x 2s x 2s]``, matching teacher ``[layer1, layer2, layer3]``.

    ``priors`` (optional, used by PDD as "MPA skip priors") is a list with one optional tensor per stage, *added to
    that stage's input* before the stage runs: entry 0 is added to ``x`` (``in_channels @ s``), entry ``i > 0`` to the
    output of stage ``i - 1`` (``in_channels // 2**i @ 2**i s``). ``None`` entries (or ``priors=None``) leave the
    decoder identical to RD.
    """

    def __init__(
        self, in_channels: int = 2048, num_blocks: Sequence[int] = (3, 4, 6), width_per_group: int = 128
    ) -> None:
        super().__init__()
        if len(num_blocks) == 0 or any(n < 1 for n in num_blocks):
            raise ValueError(f"ReverseDistillationDecoder: num_blocks must be positive integers, got {num_blocks}")
        if in_channels % (DeBottleneck.expansion * 2 ** len(num_blocks)) != 0:
            raise ValueError(
                f"ReverseDistillationDecoder: in_channels={in_channels} must be divisible by "
                f"{DeBottleneck.expansion * 2 ** len(num_blocks)} for {len(num_blocks)} stages"
            )
        self.in_channels = in_channels
        self.stages = nn.ModuleList()
        stage_channels: list[int] = []
        inplanes = in_channels
        for i, n in enumerate(num_blocks):
            out_ch = in_channels // 2 ** (i + 1)
            planes = out_ch // DeBottleneck.expansion
            shortcut = nn.Sequential(
                nn.ConvTranspose2d(inplanes, out_ch, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(out_ch)
            )
            blocks = [DeBottleneck(inplanes, planes, 2, shortcut, width_per_group)]
            blocks += [DeBottleneck(out_ch, planes, 1, None, width_per_group) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*blocks))
            stage_channels.append(out_ch)
            inplanes = out_ch
        # Teacher order (shallow first), i.e. the reverse of the stage order.
        self.out_channels: tuple[int, ...] = tuple(reversed(stage_channels))
        self.num_stages = len(num_blocks)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as the official RD decoder: Kaiming-normal (fan_out, ReLU) for nn.Conv2d, BN = identity.
        # The official ``isinstance(m, nn.Conv2d)`` test does not match nn.ConvTranspose2d, so the transposed
        # convolutions keep PyTorch's default initialisation; we reproduce that deliberately.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, priors: list[Tensor | None] | None = None) -> list[Tensor]:
        if priors is not None and len(priors) != self.num_stages:
            raise ValueError(
                f"ReverseDistillationDecoder: expected {self.num_stages} priors (one per stage, None to skip), "
                f"got {len(priors)}"
            )
        feats: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            if priors is not None:
                prior = priors[i]
                if prior is not None:
                    x = x + prior
            x = stage(x)
            feats.insert(0, x)
        return feats
