"""The fusion networks, by name: skyfuse-rt (the real-time default) and the three seed papers'.

Every network follows one I/O convention (engines export and run them against it):
`forward(visible, thermal) -> (fused, registered, flow)` with luminance inputs (B, 1, H, W) float32 in
[0, 1] (visible already pre-warped by the rig calibration), fused (B, 1, H, W) in [0, 1], registered =
the thermal frame warped onto the visible one, flow (B, 2, H, W) in pixels with
`registered(p) = thermal(p + flow(p))` (see `warp.py`). H and W must be multiples of the network's
`size_multiple` (`pad_to_multiple` helps); `dynamic_size` says whether one exported graph serves any
such H×W. Colour is handled outside (engines/colour.py). A network that registers also has
`fuse_registered(visible, thermal)`, with the same outputs, for a pair that is already registered: it
fuses without moving the thermal image (flow zero), which is how its fusion alone is scored.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SkyfuseError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class NetworkSpec:
    module: str  # engines.networks.<module>
    network: str  # nn.Module class
    config: str  # its dataclass config
    size_multiple: int  # H and W must be multiples of this
    dynamic_size: bool  # one graph for any valid H×W (no size baked into the weights or the graph)


NETWORKS: dict[str, NetworkSpec] = {
    "skyfuse-rt": NetworkSpec("skyfuse_rt", "SkyfuseRT", "SkyfuseRTConfig", 16, True),
    "umf-cmgr": NetworkSpec("umf_cmgr", "UMFCMGR", "UMFCMGRConfig", 4, True),
    "misfit-v": NetworkSpec("misfit_v", "MisfitV", "MisfitVConfig", 256, True),
    "dae-fuse": NetworkSpec("dae_fuse", "DAEFuse", "DAEFuseConfig", 8, True),
}


def spec(name: str) -> NetworkSpec:
    if name not in NETWORKS:
        raise SkyfuseError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[name]


def network_classes(name: str) -> tuple[type[nn.Module], type]:
    s = spec(name)
    module = importlib.import_module(f"{__name__}.{s.module}")
    return getattr(module, s.network), getattr(module, s.config)


def make_config(name: str, overrides: dict | None = None):
    """The network's default config with `overrides` (field -> value) applied; SkyfuseError on unknown
    fields."""
    _, config_cls = network_classes(name)
    overrides = dict(overrides or {})
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SkyfuseError(
            f"{name}: unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return config_cls(**overrides)


def registers(network: nn.Module) -> bool:
    """Whether the network registers the thermal image itself (and so can also fuse without it)."""
    return hasattr(network, "fuse_registered")


class FusionOnly(nn.Module):
    """A registering network with its registration off: `forward` is its `fuse_registered`. For rigs whose
    frames arrive registered (the rig homography leaves little to correct), where any flow the network
    reads on a registered pair is its own error."""

    def __init__(self, network: nn.Module, size_multiple: int):
        super().__init__()
        if not registers(network):
            raise SkyfuseError(f"{type(network).__name__} does not register the thermal image: there is no "
                               "registration to turn off")
        self.network, self.size_multiple, self.config = network, size_multiple, network.config

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        return self.network.fuse_registered(visible, thermal)


def default_weights(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def save_weights(network: nn.Module, path: str | Path) -> None:
    """Weights file: the config (so the architecture is rebuilt exactly) and the state dict."""
    torch.save({"config": asdict(network.config), "state_dict": network.state_dict()}, path)


def build_network(
    name: str,
    config_overrides: dict | None = None,
    weights: str | Path | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """The network `name` in eval mode. Weights come from `weights`, else (if `pretrained`) from
    engines/weights/<name>.pt when that file exists; a weights file also fixes the config (overrides
    may only repeat it)."""
    network_cls, _ = network_classes(name)
    path = Path(weights) if weights is not None else default_weights(name)
    if weights is not None and not path.is_file():
        raise SkyfuseError(f"weights file {path} not found")
    state = None
    config_fields = dict(config_overrides or {})
    if weights is not None or (pretrained and path.is_file()):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: tell the user which one
            raise SkyfuseError(f"cannot read weights {path}: {exc}") from None
        saved = state["config"]
        clash = {k: v for k, v in config_fields.items() if saved.get(k, v) != v}
        if clash:
            raise SkyfuseError(f"{path} was trained with {saved}; cannot override {clash}")
        config_fields = {**saved, **config_fields}
    network = network_cls(make_config(name, config_fields))
    if state is not None:
        try:
            network.load_state_dict(state["state_dict"])
        except RuntimeError as exc:  # weights of another version of the architecture
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise SkyfuseError(
                f"{path} does not fit this version of {name} ({first}); retrain it, or start a training "
                f"from it with `skyfuse train --init {path}`"
            ) from None
    return network.eval()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom and right up to multiples of `multiple`; crop the outputs
    back with `[..., :H, :W]`."""
    h, w = x.shape[-2:]
    pad = (0, (-w) % multiple, 0, (-h) % multiple)
    return F.pad(x, pad, mode="replicate") if any(pad) else x
