"""Kokoro's dilated vocoder convolutions on the CPU as gathered columns + one matmul.

MLX's CPU `conv1d` is slow for dilated kernels: a (1, 11520, 128) × (128, 7, 128) convolution
took 1.99 s at dilation 3 against 0.64 s at dilation 1 here, and the same dilated convolution
written as the k shifted views of the input side by side, times the flattened weight, took
0.64 s with the same output. The generator's residual blocks (`AdaINResBlock1`) are ~86% of
Kokoro's time on this CPU, and two thirds of their convolutions are dilated (3 and 5).

`use_gathered_convs(model)` re-classes those blocks' dilated convolutions; everything else (and
every other device) runs mlx-audio's code unchanged. Invariant: the result equals
`mx.conv1d`'s (checked against mlx-audio's own model in tests/engines/test_tts_engine.py).
"""

from __future__ import annotations

from typing import Any

from mlx_audio.tts.models.kokoro.istftnet import AdaINResBlock1, ConvWeighted, weight_norm


class GatheredConv(ConvWeighted):
    """A weight-normalised conv whose dilated, channels-last, stride-1 calls are a matmul."""

    def __call__(self, x: Any, conv: Any) -> Any:
        import mlx.core as mx

        weight = weight_norm(self.weight_v, self.weight_g, dim=0)  # (out, k, in)
        plain = self.stride == 1 and self.groups == 1 and conv is mx.conv1d
        if not plain or self.dilation == 1 or x.shape[-1] != weight.shape[-1]:
            return super().__call__(x, conv)
        out_channels, kernel, _ = weight.shape
        padded = mx.pad(x, [(0, 0), (self.padding, self.padding), (0, 0)])
        steps = padded.shape[1] - self.dilation * (kernel - 1)
        views = [padded[:, i * self.dilation : i * self.dilation + steps, :] for i in range(kernel)]
        columns = mx.concatenate(views, axis=-1)  # (batch, steps, k * in): tap-major like weight
        result = columns @ weight.reshape(out_channels, -1).T
        return result if self.bias is None else result + self.bias


def use_gathered_convs(model: Any) -> int:
    """Re-class the dilated convolutions of `model`'s vocoder residual blocks; their count."""
    count = 0
    for _, module in model.named_modules():
        if isinstance(module, AdaINResBlock1):
            for convolution in [*module.convs1, *module.convs2]:
                if convolution.dilation > 1:
                    convolution.__class__ = GatheredConv
                    count += 1
    return count
