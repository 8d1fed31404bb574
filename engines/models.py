"""Networks by name for the learned engines, and the facts about them that travel inside ONNX files.

Every exported graph carries its model name, precision and geometry (size multiple, fixed size) as ONNX
metadata, so an engine built from a file alone knows how to pad the frames it is given.
"""

from __future__ import annotations

import onnx

from core.errors import SkyfuseError

from .learned import Geometry

META_MODEL = "skyfuse.model"
META_PRECISION = "skyfuse.precision"
META_SIZE_MULTIPLE = "skyfuse.size_multiple"
META_FIXED_SIZE = "skyfuse.fixed_size"  # "HxW", or "" when H and W are dynamic
FUSION_ONLY = "-fusion-only"  # model-name suffix of a network exported with its registration off


def load_network(model: str, weights: str | None = None, overrides: dict | None = None):
    """The network `model` in eval mode (engines.networks.build_network); SkyfuseError when unknown."""
    try:
        from engines.networks import build_network
    except ImportError as exc:
        raise SkyfuseError(f"the networks package is not available in this install ({exc})") from None
    try:
        network = build_network(model, config_overrides=overrides, weights=weights)
    except SkyfuseError:
        raise
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SkyfuseError(f"model {model!r}: {exc}") from None
    return network.eval()


def without_registration(network):
    """`network` with its registration off (engines.networks.FusionOnly); SkyfuseError for a network that
    does not register."""
    from engines.networks import FusionOnly

    return FusionOnly(network, network_geometry(network).size_multiple).eval()


def model_label(model: str, registration: bool) -> str:
    """The name a graph or engine of `model` carries: with FUSION_ONLY when its registration is off."""
    return model if registration else model + FUSION_ONLY


def engine_network(model: str, weights: str | None = None, network=None, registration: bool = True):
    """(network, name) an engine runs: `network` when given (programmatic use), else `model` (+ `weights`);
    with its registration off when `registration` is false."""
    name = model_label(type(network).__name__ if network is not None else model, registration)
    network = network if network is not None else load_network(model, weights)
    return (network if registration else without_registration(network)), name


def require_model_for(registration: bool, onnx_path) -> None:
    """`registration=false` rebuilds the graph from the network: an ONNX file given as such has its
    registration built in."""
    if not registration and onnx_path is not None:
        raise SkyfuseError(f"registration=false needs `model`, not an ONNX file ({onnx_path} has its "
                           "registration built in; export one with `skyfuse export --no-registration`)")


def network_geometry(network) -> Geometry:
    """Size multiple and fixed size (H, W) of a network: its attributes `size_multiple` / `fixed_size`,
    else its entry in engines.networks.NETWORKS; a network found in neither takes any size."""
    multiple = getattr(network, "size_multiple", None)
    fixed = getattr(network, "fixed_size", None)
    if multiple is None:
        spec = _network_spec(network)
        if spec is not None and not spec.dynamic_size:
            raise SkyfuseError(f"{type(network).__name__} has a fixed input size, which the engines do not "
                               "know; give the network a `fixed_size` (H, W) attribute")
        multiple = spec.size_multiple if spec is not None else 1
    return Geometry(int(multiple), tuple(int(v) for v in fixed) if fixed else None)


def _network_spec(network):
    try:
        from engines.networks import NETWORKS
    except ImportError:
        return None
    module = type(network).__module__
    return next((s for s in NETWORKS.values()
                 if s.network == type(network).__name__ and module.endswith("." + s.module)), None)


def load_graph(path, load_weights: bool = True) -> onnx.ModelProto:
    """The ONNX graph in `path`; SkyfuseError when it is missing or not an ONNX file."""
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except FileNotFoundError:
        raise SkyfuseError(f"ONNX file not found: {path}") from None
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise SkyfuseError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None


def write_metadata(model: onnx.ModelProto, name: str, precision: str, geometry: Geometry) -> None:
    fixed = f"{geometry.fixed_size[0]}x{geometry.fixed_size[1]}" if geometry.fixed_size else ""
    values = {META_MODEL: name, META_PRECISION: precision,
              META_SIZE_MULTIPLE: str(geometry.size_multiple), META_FIXED_SIZE: fixed}
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto) -> tuple[str, str, Geometry]:
    """(model name, precision, geometry) of a graph; graphs from elsewhere get ("", "fp32", multiple 1)."""
    props = {p.key: p.value for p in model.metadata_props}
    fixed = props.get(META_FIXED_SIZE, "")
    size = tuple(int(v) for v in fixed.split("x")) if fixed else None
    geometry = Geometry(int(props.get(META_SIZE_MULTIPLE, 1)), size)
    return props.get(META_MODEL, ""), props.get(META_PRECISION, "fp32"), geometry
