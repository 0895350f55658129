"""The shared base of tensorized layers: geometry, factors, paths and their automatic choice."""

from __future__ import annotations

import abc
import math
import operator
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tnsearch.tn._autopath import PathKey, measure_paths, path_key
from tnsearch.tn._contract import Contraction, contracted_size, run_contraction
from tnsearch.tn._geometry import Geometry
from tnsearch.tn._network import BondLayout, Network, network_contraction, stage_contraction

__all__ = ["TNLayer"]


class TNLayer(nn.Module, abc.ABC):
    """A tensorized ``nn.Linear`` or ``nn.Conv2d``: a tensor network of factors and a bias.

    The weight ``(out, in[, kh, kw])`` is zero-padded to ``(prod(out_modes), prod(in_modes)...)``
    and reshaped to ``(n_1..n_d, m_1..m_d[, kh*kw])``, which the factors represent. The forward
    pass has several equivalent paths (``paths``); with ``path="auto"`` the fastest is measured
    on first use for each (input shape, device, dtype, training) key and cached.

    Subclasses (one per topology) implement :meth:`bond_count`, :meth:`clip_rank`,
    :meth:`build_network` and :meth:`decompose`, declare where their bonds sit with
    :meth:`bond_layout` (for bond analysis), and may add paths as ``_path_<name>`` methods
    (with ``_macs_<name>``) listed in ``linear_paths`` / ``conv_paths``.
    """

    topology: ClassVar[str] = ""
    exact_at_max_rank: ClassVar[bool] = True  # decomposing at the clipped maximal rank is exact
    linear_paths: ClassVar[tuple[str, ...]] = ()
    conv_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        geometry: Geometry,
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: int | Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.geometry = geometry
        self.in_modes, self.out_modes = tuple(in_modes), tuple(out_modes)
        self.in_features_padded = math.prod(self.in_modes)  # M >= in_features
        self.out_features_padded = math.prod(self.out_modes)  # N >= out_features
        if self.in_features_padded < geometry.in_features:
            raise ValueError(f"in_modes: product of {self.in_modes} < {geometry.in_features}")
        if self.out_features_padded < geometry.out_features:
            raise ValueError(f"out_modes: product of {self.out_modes} < {geometry.out_features}")
        n = self.bond_count(len(self.in_modes), geometry.conv)
        self.rank = self.clip_rank(self.in_modes, self.out_modes, geometry.kernel, _ranks(rank, n))
        self.network: Network = self.build_network()
        for k, name in enumerate(self.network.names):
            factor = torch.empty(self.network.shape(k), device=device, dtype=dtype)
            self.register_parameter(name, nn.Parameter(factor))
        bias = torch.empty(geometry.out_features, device=device, dtype=dtype)
        self.bias = nn.Parameter(bias) if geometry.bias else None
        self._path = "auto"
        self._chosen: dict[PathKey, str] = {}
        self._contractions: dict[tuple, Contraction] = {}
        self._frozen = False
        self._weight_cache: Contraction | None = None  # made on first use (`_weight_contraction`)
        self.reset_parameters()

    # --- what a topology provides -------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def bond_count(cls, order: int, conv: bool) -> int:
        """Number of bonds (entries of ``rank``) for ``order`` modes per side."""

    @classmethod
    @abc.abstractmethod
    def clip_rank(
        cls, in_modes: tuple[int, ...], out_modes: tuple[int, ...], kernel: int, rank: tuple
    ) -> tuple[int, ...]:
        """Clip one requested rank per bond to the largest meaningful values."""

    @abc.abstractmethod
    def build_network(self) -> Network:
        """The factors and their indices, from ``in_modes``, ``out_modes``, ``rank``."""

    @abc.abstractmethod
    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """Factors (in ``network`` order) for a float64 weight tensor ``(n.., m.., [k])``."""

    def bond_layout(self) -> BondLayout | None:
        """Where the entries of ``rank`` sit in ``network`` (None: not declared).

        A :class:`~tnsearch.tn.TreeLayout` when the factors form a tree, a
        :class:`~tnsearch.tn.ComponentLayout` when they share one component index (CP). Bond
        analysis (``tnsearch.bonds``) reads only this, so a topology that declares it is
        analyzable and truncatable.
        """
        return None

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        rank: int | Sequence[int],
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        init: str = "decompose",
    ) -> TNLayer:
        """Tensorize ``module`` (Linear or Conv2d); ``init="decompose"`` fits its weight."""
        geometry = Geometry.from_module(module)
        w = module.weight
        layer = cls(geometry, in_modes, out_modes, rank, device=w.device, dtype=w.dtype)
        if init == "decompose":
            with torch.no_grad():
                factors = layer.decompose(layer._weight_tensor(w))
                for p, f in zip(layer.factors(), factors, strict=True):
                    p.copy_(f.reshape(p.shape))
                if module.bias is not None:
                    layer.bias.copy_(module.bias)
        elif init != "random":
            raise ValueError(f"init: must be 'decompose' or 'random', got {init!r}")
        return layer

    def _weight_tensor(self, w: torch.Tensor) -> torch.Tensor:
        # (O, I[, kh, kw]) -> zero-padded float64 (n_1..n_d, m_1..m_d[, kh*kw]) on the CPU
        g = self.geometry
        w = w.detach().to("cpu", torch.float64).reshape(g.out_features, g.in_features, g.kernel)
        n, m = math.prod(self.out_modes), math.prod(self.in_modes)
        w = F.pad(w, (0, 0, 0, m - g.in_features, 0, n - g.out_features))
        return w.reshape(*self.out_modes, *self.in_modes, *((g.kernel,) if g.conv else ()))

    def reset_parameters(self) -> None:
        """Random init: output variance on N(0, 1) input as for the dense layer's default init."""
        target = 1.0 / (3.0 * self.geometry.fan_in)  # kaiming_uniform(a=sqrt(5)) weight variance
        factors = self.factors()
        std = (target / self.network.n_terms()) ** (1.0 / (2 * len(factors)))
        with torch.no_grad():
            for p in factors:
                p.normal_(0.0, std)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.geometry.fan_in)
                self.bias.uniform_(-bound, bound)

    # --- public properties ----------------------------------------------------------------------

    def factors(self) -> tuple[nn.Parameter, ...]:
        """The factor parameters, in ``network`` order."""
        return tuple(getattr(self, n) for n in self.network.names)

    @property
    def n_params(self) -> int:
        """Trainable parameters (factors + bias)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @classmethod
    def available_paths(cls, conv: bool) -> tuple[str, ...]:
        """The paths of this topology for a Conv2d (``conv``) or a Linear layer."""
        return ("reconstruct", "einsum", *(cls.conv_paths if conv else cls.linear_paths))

    @property
    def paths(self) -> tuple[str, ...]:
        """Names of the equivalent ways to compute the forward pass."""
        return self.available_paths(self.geometry.conv)

    @property
    def path(self) -> str:
        """``"auto"`` (measure and cache the fastest) or the forced path name."""
        return self._path

    @path.setter
    def path(self, name: str) -> None:
        if name != "auto" and name not in self.paths:
            raise ValueError(f"path: unknown {name!r} (available: auto, {', '.join(self.paths)})")
        self._path = name

    @property
    def chosen_paths(self) -> dict[PathKey, str]:
        """What ``path="auto"`` picked: (shape, device, dtype, training) -> path name."""
        return dict(self._chosen)

    def path_for(self, x: torch.Tensor) -> str:
        """The path a forward pass on ``x`` takes, found without measuring: the forced one, else
        what ``auto`` chose for ``x``'s key, else the one with the fewest MACs (as when frozen)."""
        if self._path != "auto":
            return self._path
        if self.geometry.conv and x.dim() == 3:
            x = x.unsqueeze(0)
        return self._chosen.get(path_key(x)) or self._fewest(tuple(x.shape))

    @property
    def _weight_contraction(self) -> Contraction:
        """The contraction that rebuilds the dense weight, made on first use (planning
        takes tens of milliseconds, and a layer built only for its size never needs it)."""
        if self._weight_cache is None:
            self._weight_cache = network_contraction(self.network, "weight")
        return self._weight_cache

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or resume) measuring: unseen keys then take the path with the fewest MACs."""
        self._frozen = frozen

    def extra_repr(self) -> str:
        g = self.geometry
        kind = f"conv{g.kernel_size}" if g.conv else "linear"
        return (
            f"{self.topology}, {kind}, in={g.in_features} {self.in_modes}, "
            f"out={g.out_features} {self.out_modes}, rank={self.rank}, path={self._path}"
        )

    # --- forward ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry.conv and x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        name = self._path
        if name == "auto":
            name = self._choose(x)
        return getattr(self, "_path_" + name)(x)

    def _choose(self, x: torch.Tensor) -> str:
        key = path_key(x)
        name = self._chosen.get(key)
        if name is not None:
            return name
        if torch.compiler.is_compiling():
            return self._fewest(tuple(x.shape))
        if self._frozen:
            name = self._fewest(tuple(x.shape))
        else:
            fns = {n: getattr(self, "_path_" + n) for n in self.paths}
            params = [p for p in self.parameters() if p.requires_grad]
            name, _ = measure_paths(fns, x, params)
        self._chosen[key] = name
        return name

    def _contraction(self, kind: str, batch: int | torch.SymInt, spatial: int = 1) -> Contraction:
        batch = contracted_size(
            batch
        )  # a contraction runs on any batch; its order is chosen for this one
        key = (kind, batch, spatial)
        contraction = self._contractions.get(key)
        if contraction is None:
            contraction = network_contraction(self.network, kind, batch, spatial)
            if not torch.compiler.is_compiling():
                self._contractions[key] = contraction
        return contraction

    def _stage_contraction(
        self,
        tag: str,
        t_shape: tuple[int, ...],
        t_idx: tuple[str, ...],
        factor_names: tuple[str, ...],
        out_idx: tuple[str, ...],
        dims: tuple[tuple[str, int], ...],
    ) -> Contraction:
        """Cached :func:`~tnsearch.tn._network.stage_contraction` (e.g. a channel stage)."""
        key = (tag, dims, t_shape)
        contraction = self._contractions.get(key)
        if contraction is None:
            contraction = stage_contraction(
                self.network, t_shape, t_idx, factor_names, out_idx, dims
            )
            if not torch.compiler.is_compiling():
                self._contractions[key] = contraction
        return contraction

    def _bias_add(self, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.bias is None:
            return y
        b = self.bias.to(y.dtype)
        return y + (b.view(-1, *([1] * (y.dim() - channel_dim - 1))) if channel_dim != -1 else b)

    def weight_tensor(self) -> torch.Tensor:
        """The tensor ``(n_1..n_d, m_1..m_d[, kh*kw])`` the factors represent, padding included
        (its matricization across a bond has at most the bond's size as rank)."""
        w = run_contraction(self._weight_contraction, self.factors())  # (N, M[, K])
        kernel = (self.geometry.kernel,) if self.geometry.conv else ()
        return w.reshape(*self.out_modes, *self.in_modes, *kernel)

    def dense_weight(self) -> torch.Tensor:
        """The dense weight ``(out, in[, kh, kw])`` the factors represent."""
        g = self.geometry
        w = run_contraction(self._weight_contraction, self.factors())  # (N, M[, K])
        if w.shape[0] != g.out_features or w.shape[1] != g.in_features:
            w = w[: g.out_features, : g.in_features]
        return w.reshape(g.out_features, g.in_features, *g.kernel_size) if g.conv else w

    def _path_reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if g.conv:
            return F.conv2d(x, self.dense_weight(), self.bias, g.stride, g.padding, g.dilation)
        return F.linear(x, self.dense_weight(), self.bias)

    def _path_einsum(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        m, n = self.in_features_padded, self.out_features_padded
        if not g.conv:
            lead = x.shape[:-1]
            x2 = x.reshape(-1, g.in_features)  # (B, I)
            if m > g.in_features:
                x2 = F.pad(x2, (0, m - g.in_features))
            contraction = self._contraction("linear", x2.shape[0])
            if (
                contraction.fusable and n == g.out_features and self.bias is not None
            ):  # bias in the addmm
                y = run_contraction(contraction, (x2, *self.factors()), self.bias)  # (B, N)
                return y.reshape(*lead, g.out_features)
            y = run_contraction(contraction, (x2, *self.factors()))  # (B, N)
            if n > g.out_features:
                y = y[:, : g.out_features]
            return self._bias_add(y, -1).reshape(*lead, g.out_features)
        b, _, h, w = x.shape
        if m > g.in_features:
            x = F.pad(x, (0, 0, 0, 0, 0, m - g.in_features))
        ho, wo = g.out_hw(h, w)
        cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (B, M*K, L)
        y = run_contraction(
            self._contraction("conv", b, ho * wo), (cols, *self.factors())
        )  # (B, N, L)
        if n > g.out_features:
            y = y[:, : g.out_features]
        return self._bias_add(y.reshape(b, g.out_features, ho, wo), 1)

    # --- cost -------------------------------------------------------------------------------------

    def flops(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates (MACs, not 2x FLOPs) of one forward pass of the path in use.

        The path in use is the forced one, else what ``auto`` chose for this input shape, else
        the one with the fewest MACs. Elementwise work (bias, padding) is not counted.
        """
        shape = tuple(int(s) for s in input_shape)
        name = self._path
        if name == "auto":
            picked = [p for k, p in self._chosen.items() if k[0] == shape]
            name = picked[-1] if picked else self._fewest(shape)
        return self._macs(name, shape)

    def _fewest(self, shape: tuple[int, ...]) -> str:
        # (a plain loop: traceable by torch.compile, unlike min(key=...))
        best, fewest = "einsum", -1
        for name in self.paths:
            macs = self._macs(name, shape)
            if fewest < 0 or macs < fewest:
                best, fewest = name, macs
        return best

    def _split(self, shape: tuple[int, ...]) -> tuple[int, int]:
        # (batch, output pixels) of an input shape
        g = self.geometry
        if not g.conv:
            return math.prod(shape[:-1]), 1
        ho, wo = g.out_hw(shape[-2], shape[-1])
        return (shape[0] if len(shape) == 4 else 1), ho * wo

    def _macs(self, name: str, shape: tuple[int, ...]) -> int:
        g = self.geometry
        b, l = self._split(shape)
        if name == "reconstruct":
            return self._weight_contraction.macs + b * l * g.out_features * g.fan_in
        if name == "einsum":
            return self._contraction("conv" if g.conv else "linear", b, l).macs
        return getattr(self, "_macs_" + name)(b, l, shape)

    # --- conversion -------------------------------------------------------------------------------

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """The equivalent ``nn.Linear`` / ``nn.Conv2d`` (same geometry, dtype and device)."""
        g = self.geometry
        ref = self.factors()[0]
        kw = {"bias": g.bias, "device": ref.device, "dtype": ref.dtype}
        if g.conv:
            dense = nn.Conv2d(
                g.in_features, g.out_features, g.kernel_size, g.stride, g.padding, g.dilation, **kw
            )
        else:
            dense = nn.Linear(g.in_features, g.out_features, **kw)
        with torch.autocast(ref.device.type, enabled=False):
            dense.weight.copy_(self.dense_weight())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense


def _ranks(rank: int | Sequence[int], n: int) -> tuple[int, ...]:
    """One requested rank per bond, validated."""
    raw = list(rank) if isinstance(rank, Sequence) and not isinstance(rank, str) else [rank]
    try:
        if not raw or any(isinstance(r, (bool, str)) for r in raw):
            raise TypeError
        values = [operator.index(r) for r in raw]
    except TypeError:
        raise ValueError(f"rank: must be an int or a sequence of ints, got {rank!r}") from None
    for r in values:
        if r < 1:
            raise ValueError(f"rank: must be >= 1, got {r}")
    if len(values) == 1:
        return tuple(values) * n
    if len(values) != n:
        raise ValueError(f"rank: expected 1 or {n} values (one per bond), got {len(values)}")
    return tuple(values)
