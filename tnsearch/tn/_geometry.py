"""What a tensorized layer replaces: the geometry of an ``nn.Linear`` or ``nn.Conv2d``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["Geometry"]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Geometry:
    """What a tensorized layer replaces: Linear(in, out) or Conv2d(in, out, kernel, ...)."""

    in_features: int
    out_features: int
    bias: bool
    conv: bool = False
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def kernel(self) -> int:
        """Size of the flattened kernel mode (1 for Linear)."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def fan_in(self) -> int:
        return self.in_features * self.kernel

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width of the convolution for an (h, w) input."""
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                (h, w), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )

    @classmethod
    def from_module(cls, module: nn.Module) -> Geometry:
        """Geometry of an ``nn.Linear`` or ``nn.Conv2d`` (groups=1, zero padding).

        Raises:
            TypeError: ``module: ...`` for any other module type.
            ValueError: ``module: ...`` for an unsupported Conv2d or an uninitialized lazy module.
        """
        if isinstance(getattr(module, "weight", None), nn.parameter.UninitializedParameter):
            raise ValueError(f"module: {type(module).__name__} is not initialized yet (lazy)")
        if isinstance(module, nn.Linear):
            return cls(module.in_features, module.out_features, module.bias is not None)
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module: expected nn.Linear or nn.Conv2d, got {type(module).__name__}")
        name = type(module).__name__
        if module.groups != 1:
            raise ValueError(
                f"module: {name} with groups={module.groups} is not supported (groups must be 1)"
            )
        if module.padding_mode != "zeros":
            raise ValueError(
                f"module: {name} with padding_mode={module.padding_mode!r} is not supported "
                "(padding_mode must be 'zeros')"
            )
        kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
        padding = module.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            if any(t % 2 for t in total):
                raise ValueError(
                    f"module: {name} with padding='same' needs asymmetric padding here "
                    "(even effective kernel), which is not supported"
                )
            padding = (total[0] // 2, total[1] // 2)
        return cls(
            module.in_channels,
            module.out_channels,
            module.bias is not None,
            True,
            kernel,
            _pair(module.stride),
            _pair(padding),
            dilation,
        )
