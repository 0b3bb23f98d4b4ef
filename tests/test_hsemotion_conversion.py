"""`avemotion convert-hsemotion`: a whole pickled timm EfficientNet becomes a transformers EfficientNet with the same
pre-logits features, read without timm and without running code from the file.

Two models: the shared fixture (timm 1.x module paths, tf_efficientnet_b2 layout at width 0.4, 224 px) and one built
here in timm 0.4's layout and module paths (separate activation modules, `gate_fn`, `has_residual`), with another
width, depth, kernels, expansion ratios and 4 stages, checked at 260 px where TF "same" padding is asymmetric.
"""

import argparse
import collections
import math
import os
import pickle
import re
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, EfficientNetForImageClassification, EfficientNetModel

from avemotion.models.hsemotion.convert_hsemotion_checkpoint import (
    AFFECTNET_7_LABELS,
    AFFECTNET_8_LABELS,
    add_arguments,
    convert_hsemotion_checkpoint,
    run,
)
from avemotion.models.hsemotion.timm_pickle import load_pickled_module
from avemotion.utils.safe_pickle import UnsafePickleError

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hsemotion_tiny"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"fixture {FIXTURE} not present")


def _fixture_io():
    data = np.load(FIXTURE / "enet_b2_8_tiny_io.npz")
    return torch.from_numpy(data["pixel_values"]), data["pooled_features"], data["logits"]


# ---------------------------------------------------------------------------------------------- the shared fixture


@needs_fixture
def test_fixture_features_match_timm_and_the_directory_reloads(tmp_path):
    pixel_values, features, _ = _fixture_io()
    out = tmp_path / "enet"
    model = convert_hsemotion_checkpoint(FIXTURE / "enet_b2_8_tiny.pt", out)
    assert type(model) is EfficientNetModel and "timm" not in sys.modules
    config = model.config
    assert (config.hidden_dim, config.width_coefficient, config.batch_norm_eps) == (512, 0.4, 1e-3)
    assert config.depthwise_padding == [] and config.hidden_act == "swish"
    assert sum(math.ceil(config.depth_coefficient * n) for n in config.num_block_repeats) == 23  # B2: 23 blocks

    reloaded = EfficientNetModel.from_pretrained(out).eval()
    assert (out / "model.safetensors").is_file()
    with torch.no_grad():
        pooled = reloaded(pixel_values).pooler_output
    assert pooled.shape == (2, 512)
    np.testing.assert_allclose(pooled.numpy(), features, atol=1e-5, rtol=0)

    processor = AutoImageProcessor.from_pretrained(out)
    assert dict(processor.size) == {"height": 224, "width": 224} and not processor.do_center_crop
    np.testing.assert_allclose(processor.image_mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(processor.image_std, [0.229, 0.224, 0.225])
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pixels = processor(image, return_tensors="pt")["pixel_values"][0].numpy().transpose(1, 2, 0)
    expected = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels, expected, atol=1e-5)  # rescale + ImageNet normalisation, nothing more


@needs_fixture
def test_cli_run_keeps_the_affectnet_classifier(tmp_path):
    pixel_values, features, logits = _fixture_io()
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--checkpoint",
            str(FIXTURE / "enet_b2_8_tiny.pt"),
            "--output_dir",
            str(tmp_path / "cls"),
            "--with_classifier",
        ]
    )
    assert args.image_size == 224
    run(args)
    model = EfficientNetForImageClassification.from_pretrained(tmp_path / "cls").eval()
    assert [model.config.id2label[i] for i in range(8)] == list(AFFECTNET_8_LABELS)
    with torch.no_grad():
        np.testing.assert_allclose(model(pixel_values).logits.numpy(), logits, atol=1e-5, rtol=0)
        pooled = model.efficientnet(pixel_values).pooler_output
    np.testing.assert_allclose(pooled.numpy(), features, atol=1e-5, rtol=0)
    dashed = parser.parse_args(["--checkpoint", "a.pt", "--output-dir", "out", "--image-size", "260"])
    assert (dashed.output_dir, dashed.image_size, dashed.with_classifier) == ("out", 260, False)


@needs_fixture
def test_wrong_label_count_and_odd_image_size_are_errors(tmp_path):
    checkpoint = FIXTURE / "enet_b2_8_tiny.pt"
    with pytest.raises(ValueError, match="8 outputs; give that many labels"):
        convert_hsemotion_checkpoint(checkpoint, with_classifier=True, labels=list(AFFECTNET_7_LABELS))
    with pytest.raises(ValueError, match="image_size 225 is odd"):
        convert_hsemotion_checkpoint(checkpoint, image_size=225)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------- a model in timm 0.4's layout, built here without timm

_OLD_TIMM_MODULES = (
    "timm",
    "timm.models",
    "timm.models.efficientnet",
    "timm.models.efficientnet_blocks",
    "timm.models.layers",
    "timm.models.layers.conv2d_same",
    "timm.models.layers.activations",
    "timm.models.layers.adaptive_avgmax_pool",
)


def _as_timm(obj, module):
    obj.__module__, obj.__qualname__ = module, obj.__name__
    return obj


def sigmoid(x, inplace=False):
    return x.sigmoid()


class Conv2dSame(nn.Conv2d):
    """timm's TensorFlow 'same' convolution: pads (total // 2, total - total // 2) for the input at hand."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.weight.shape[-2:], self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(in_chs, out_chs, kernel, stride=1, groups=1, tf_same=True):
    if stride == 2 and tf_same:
        return Conv2dSame(in_chs, out_chs, kernel, stride, padding=0, groups=groups, bias=False)
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=False)


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate_fn = sigmoid

    def forward(self, x):
        scale = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate_fn(scale)


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_chs, out_chs, kernel, stride, tf_same):
        super().__init__()
        self.has_residual = in_chs == out_chs and stride == 1
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, in_chs, tf_same)
        self.bn1, self.act1 = _bn(in_chs), nn.SiLU(inplace=True)
        self.se = SqueezeExcite(in_chs, max(1, int(in_chs * 0.25)))
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2, self.act2 = _bn(out_chs), nn.Identity()

    def forward(self, x):
        y = self.act2(self.bn2(self.conv_pw(self.se(self.act1(self.bn1(self.conv_dw(x)))))))
        return y + x if self.has_residual else y


class InvertedResidual(nn.Module):
    def __init__(self, in_chs, out_chs, kernel, stride, expand, tf_same):
        super().__init__()
        mid = in_chs * expand
        self.has_residual = in_chs == out_chs and stride == 1
        self.conv_pw, self.bn1, self.act1 = _conv(in_chs, mid, 1), _bn(mid), nn.SiLU(inplace=True)
        self.conv_dw = _conv(mid, mid, kernel, stride, mid, tf_same)
        self.bn2, self.act2 = _bn(mid), nn.SiLU(inplace=True)
        self.se = SqueezeExcite(mid, max(1, int(in_chs * 0.25)))
        self.conv_pwl, self.bn3 = _conv(mid, out_chs, 1), _bn(out_chs)

    def forward(self, x):
        y = self.act2(self.bn2(self.conv_dw(self.act1(self.bn1(self.conv_pw(x))))))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.has_residual else y


class SelectAdaptivePool2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool_type, self.pool, self.flatten = "avg", nn.AdaptiveAvgPool2d(1), nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.pool(x))


class EfficientNet(nn.Module):
    """width 0.5, stages (kind, kernel, stride, expansion, out base width, repeats) unlike any B-variant."""

    STAGES = (("ds", 3, 1, 1, 16, 1), ("ir", 5, 2, 4, 32, 2), ("ir", 7, 2, 6, 48, 1), ("ir", 3, 2, 3, 64, 3))

    def __init__(self, num_classes=7, tf_same=True):
        super().__init__()
        self.drop_rate = 0.2
        self.conv_stem = _conv(3, 16, 3, 2, tf_same=tf_same)
        self.bn1, self.act1 = _bn(16), nn.SiLU(inplace=True)
        stages, in_chs = [], 16
        for kind, kernel, stride, expand, out_base, repeats in self.STAGES:
            out_chs, stage = out_base // 2, []
            for index in range(repeats):
                step = stride if index == 0 else 1
                if kind == "ds":
                    stage.append(DepthwiseSeparableConv(in_chs, out_chs, kernel, step, tf_same))
                else:
                    stage.append(InvertedResidual(in_chs, out_chs, kernel, step, expand, tf_same))
                in_chs = out_chs
            stages.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2, self.act2 = _conv(in_chs, 640, 1), _bn(640), nn.SiLU(inplace=True)
        self.global_pool = SelectAdaptivePool2d()
        # as some HSEmotion files have it; HSEmotion's own code sets Identity to extract features
        self.classifier = nn.Sequential(nn.Linear(640, num_classes)) if num_classes else nn.Identity()

    def forward_features(self, x):
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        return self.global_pool(self.act2(self.bn2(self.conv_head(x))))

    def forward(self, x):
        return self.classifier(self.forward_features(x))


for _cls, _module in (
    (EfficientNet, "timm.models.efficientnet"),
    (DepthwiseSeparableConv, "timm.models.efficientnet_blocks"),
    (InvertedResidual, "timm.models.efficientnet_blocks"),
    (SqueezeExcite, "timm.models.efficientnet_blocks"),
    (Conv2dSame, "timm.models.layers.conv2d_same"),
    (sigmoid, "timm.models.layers.activations"),
    (SelectAdaptivePool2d, "timm.models.layers.adaptive_avgmax_pool"),
):
    _as_timm(_cls, _module)


def _save_old_timm_model(path, monkeypatch, **kwargs):
    """torch.save(model) of the timm-0.4-style model; the fake `timm` modules exist only while saving."""
    torch.manual_seed(5)
    model = EfficientNet(**kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    with monkeypatch.context() as patch:
        for name in _OLD_TIMM_MODULES:
            patch.setitem(sys.modules, name, types.ModuleType(name))
        for cls in (EfficientNet, DepthwiseSeparableConv, InvertedResidual, SqueezeExcite, Conv2dSame, sigmoid,
                    SelectAdaptivePool2d):  # fmt: skip
            setattr(sys.modules[cls.__module__], cls.__name__, cls)
        torch.save(model, path)
    assert "timm" not in sys.modules
    return model


@pytest.mark.parametrize(("image_size", "depthwise_padding"), [(224, []), (260, [3, 4])])
def test_a_model_in_old_timm_layout_and_paths_converts_at_its_size(
    tmp_path, monkeypatch, image_size, depthwise_padding
):
    timm_model = _save_old_timm_model(tmp_path / "enet_b2_7.pt", monkeypatch)
    with zipfile.ZipFile(tmp_path / "enet_b2_7.pt") as archive:
        text = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"timm.models.efficientnet_blocks" in text and b"timm.models.layers.conv2d_same" in text

    model = convert_hsemotion_checkpoint(tmp_path / "enet_b2_7.pt", image_size=image_size, with_classifier=True)
    config = model.config
    # at 260 px, the stride-2 depthwise convolutions of blocks 3 and 4 see odd sizes (65, 33): symmetric padding
    assert config.depthwise_padding == depthwise_padding
    assert (config.width_coefficient, config.depth_coefficient, config.hidden_dim) == (0.5, 1.0, 640)
    assert (config.kernel_sizes, config.strides, config.expand_ratios) == ([3, 5, 7, 3], [1, 2, 2, 2], [1, 4, 6, 3])
    assert config.num_block_repeats == [1, 2, 1, 3]
    assert [config.id2label[i] for i in range(7)] == list(AFFECTNET_7_LABELS)

    pixel_values = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_model.forward_features(pixel_values)
        output = model(pixel_values, output_hidden_states=False)
        pooled = model.efficientnet(pixel_values).pooler_output
        expected_logits = timm_model.classifier(expected)
    np.testing.assert_allclose(pooled.numpy(), expected.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(output.logits.numpy(), expected_logits.numpy(), atol=1e-5, rtol=0)
    assert "timm" not in sys.modules


def test_a_model_without_classifier_converts_as_a_backbone(tmp_path, monkeypatch):
    timm_model = _save_old_timm_model(tmp_path / "features.pt", monkeypatch, num_classes=0)
    model = convert_hsemotion_checkpoint(tmp_path / "features.pt")
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_allclose(
            model(pixel_values).pooler_output.numpy(), timm_model(pixel_values).numpy(), atol=1e-5, rtol=0
        )
    with pytest.raises(ValueError, match=r"features\.pt: has no classifier"):
        convert_hsemotion_checkpoint(tmp_path / "features.pt", with_classifier=True)


def test_cli_reports_a_refused_file_in_one_line(tmp_path, monkeypatch, capsys):
    from avemotion import cli

    monkeypatch.setitem(
        cli.SUBCOMMANDS, "convert-hsemotion", ("avemotion.models.hsemotion.convert_hsemotion_checkpoint", "convert")
    )
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save(_Reduce(os.system, f"touch '{marker}'"), path)
    status = cli.main(["convert-hsemotion", "--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("avemotion convert-hsemotion: error: ") and "evil.pt: refusing" in error
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pytorch_style_symmetric_stem_padding_is_not_expressible(tmp_path, monkeypatch):
    _save_old_timm_model(tmp_path / "pt_style.pt", monkeypatch, tf_same=False)
    with pytest.raises(ValueError, match=r"pt_style\.pt: conv_stem pads symmetrically"):
        convert_hsemotion_checkpoint(tmp_path / "pt_style.pt")


# --------------------------------------------------------------------------- files that are refused or rejected


class _Reduce:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _marker_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('code ran')"


def _torch_zip(path, data_pkl: bytes):
    """A zip-format torch file holding a hand-written data.pkl."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def _stack_global_call(module: str, name: str, *args: str) -> bytes:
    call = pickle.MARK + b"".join(_text(arg) for arg in args) + pickle.TUPLE + pickle.REDUCE
    return pickle.PROTO + b"\x04" + _text(module) + _text(name) + pickle.STACK_GLOBAL + call + pickle.STOP


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (lambda marker: _Reduce(os.system, f"touch '{marker}'"), r"refusing to load (posix|nt)\.system"),
        (lambda marker: _Reduce(eval, _marker_code(marker)), r"refusing to load builtins\.eval"),
        (lambda marker: {"model": _Reduce(exec, _marker_code(marker))}, r"refusing to load builtins\.exec"),
    ],
    ids=["os.system", "eval", "exec-inside-a-dict"],
)
def test_torch_saved_pickles_that_run_code_are_refused(tmp_path, payload, match):
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save(payload(marker), path)
    with pytest.raises(UnsafePickleError, match=match) as info:
        convert_hsemotion_checkpoint(path, tmp_path / "out")
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)
    assert not marker.exists(), "code from the pickle ran"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("timm.layers", "__builtins__.eval"),  # a dotted name, even under an accepted prefix
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ("builtins", "eval"),
        ("torch", "load"),
    ],
)
def test_crafted_globals_are_refused_before_anything_runs(tmp_path, module, name):
    marker, path = tmp_path / "marker", tmp_path / "crafted.pt"
    _torch_zip(path, _stack_global_call(module, name, _marker_code(marker)))
    with pytest.raises(UnsafePickleError, match=re.escape(f"crafted.pt: refusing to load {module}.{name} (")):
        convert_hsemotion_checkpoint(path)
    assert not marker.exists()


def test_names_under_timm_are_stand_ins_never_resolved(tmp_path):
    # `timm.os.system(...)`: accepted by name into a stand-in, so it is recorded, not called
    marker, path = tmp_path / "marker", tmp_path / "standin.pt"
    _torch_zip(path, _stack_global_call("timm.os", "system", f"touch '{marker}'"))
    with pytest.raises(
        ValueError, match=r"standin\.pt: the pickled object is a system, not a pickled torch\.nn\.Module"
    ):
        convert_hsemotion_checkpoint(path)
    assert not marker.exists()


def test_foreign_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "pid.pt"
    _torch_zip(path, pickle.PROTO + b"\x02" + _text("module") + pickle.BINPERSID + pickle.STOP)
    with pytest.raises(UnsafePickleError, match="not a storage record"):
        load_pickled_module(path)


def test_files_without_an_efficientnet_are_clear_errors(tmp_path):
    torch.save(nn.Linear(4, 2), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match=r"linear\.pt: holds a torch\.nn\.modules\.linear\.Linear, not a timm Eff"):
        convert_hsemotion_checkpoint(tmp_path / "linear.pt")
    torch.save({"conv_stem.weight": torch.zeros(16, 3, 3, 3)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match=r"state_dict\.pt: the pickled object is a dict, not a pickled torch\.nn"):
        convert_hsemotion_checkpoint(tmp_path / "state_dict.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"legacy\.pt: not a zip-format torch file"):
        convert_hsemotion_checkpoint(tmp_path / "legacy.pt")
    with pytest.raises(ValueError, match=r"missing\.pt: no such file"):
        convert_hsemotion_checkpoint(tmp_path / "missing.pt")


def test_tensors_must_stay_inside_their_storage(tmp_path):
    path = tmp_path / "oob.pt"
    torch.save(nn.Linear(4, 2), path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    key = next(name for name in files if name.endswith("data.pkl"))
    # the weight (2, 4) claims stride (40, 1): it would read past its 8-element storage
    files[key] = files[key].replace(b"K\x04K\x01\x86", b"K(K\x01\x86", 1)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="runs past its storage"):
        load_pickled_module(path)


# ------------------------------------------- memory: nothing a small file declares is allocated before it is checked
# Each crafted file declares 2**40 elements (4 TiB as float32): had the check come after the allocation, the test
# would fail with a MemoryError/RuntimeError instead of the ValueError naming the file.


def _module_with_buffers(**buffers) -> nn.Module:
    module = nn.Module()
    for name, tensor in buffers.items():
        module.register_buffer(name, tensor)
    return module


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (
            lambda: torch.zeros(1).expand(2**40),
            r"size \(1099511627776,\), stride \(0,\) on storage 0 repeats elements",
        ),
        (lambda: torch.zeros(2, 3).expand(2**40, 2, 3), r"repeats elements \(stride 0\)"),
        # positive but overlapping strides: four dims of 1024 over 4096 bytes
        (
            lambda: torch.zeros(4096, dtype=torch.uint8).as_strided((1024,) * 4, (1,) * 4),
            r"has 1099511627776 elements, more than the 4096 of its storage",
        ),
    ],
    ids=["stride-0", "stride-0-leading", "overlapping-strides"],
)
def test_tensors_with_more_elements_than_their_storage_are_refused(tmp_path, tensor, match):
    path = tmp_path / "expanded.pt"
    torch.save(_module_with_buffers(big=tensor()), path)
    assert path.stat().st_size < 20_000
    with pytest.raises(ValueError, match=match) as info:
        convert_hsemotion_checkpoint(path, tmp_path / "out")
    assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_one_storage_named_many_times_cannot_multiply_the_copies(tmp_path):
    path = tmp_path / "shared.pt"
    shared = torch.zeros(256)  # 1024 storage bytes; each name of it is one copy of 256 elements
    root = nn.Module()
    for index in range(5):
        root.add_module(f"m{index}", _module_with_buffers(t=shared))
    torch.save(root, path)
    with pytest.raises(ValueError, match=r"shared\.pt: the pickled object\.m4: _buffers\['t'\] \(\(256,\)\) brings"):
        load_pickled_module(path)
    root.m4 = nn.Module()  # four names of it: within the archive's storage bytes
    torch.save(root, path)
    assert len(load_pickled_module(path).state_dict()) == 4


class _SetStateSource:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (0,), (1,), False, collections.OrderedDict())


class _SetStateGrown(_SetStateSource):
    """A 0-element tensor whose pickled state would make `Tensor.__setstate__` call `set_()` with 2**40 elements of
    another (empty) storage: torch would grow it to 4 TiB of uninitialised memory."""

    def __reduce__(self):
        return (*super().__reduce__(), (_SetStateSource(self.storage), 0, (2**40,), (1,)))


def test_setting_the_state_of_a_tensor_is_refused(tmp_path):
    path = tmp_path / "setstate.pt"
    empty = torch.storage.TypedStorage(
        wrap_storage=torch.empty(0).untyped_storage(), dtype=torch.float32, _internal=True
    )
    module = nn.Module()
    module._buffers["big"] = _SetStateGrown(empty)
    torch.save(module, path)
    with pytest.raises(
        UnsafePickleError, match=r"setstate\.pt: refusing to set the state of a Tensor \(pickle BUILD\)"
    ):
        convert_hsemotion_checkpoint(path)


def _storage_record() -> bytes:
    """Protocol 2: the persistent id ('storage', torch.FloatStorage, '0', 'cpu', 2)."""
    record = _text("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n" + _text("0") + _text("cpu") + b"K\x02"
    return pickle.MARK + record + pickle.TUPLE + pickle.BINPERSID


@pytest.mark.parametrize(
    ("target", "kind"),
    [(_storage_record, "_Storage"), (lambda: pickle.EMPTY_DICT, "dict"), (lambda: pickle.EMPTY_LIST, "list")],
    ids=["storage", "dict", "list"],
)
def test_setting_the_state_of_anything_but_a_stand_in_is_refused(tmp_path, target, kind):
    path = tmp_path / "build.pt"
    _torch_zip(path, pickle.PROTO + b"\x02" + target() + pickle.EMPTY_DICT + pickle.BUILD + pickle.STOP)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/data/0", bytes(8))
    with pytest.raises(UnsafePickleError, match=rf"build\.pt: refusing to set the state of a {kind} \(pickle BUILD"):
        load_pickled_module(path)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (b"\x8a\x06\x00\x00\x00\x00\x00\x01", r"bytearray\(\) of a int: expected plain data"),  # bytearray(2**40)
        (_storage_record(), r"bytearray\(\) of a _Storage: expected plain data"),
    ],
    ids=["an-int", "a-storage"],
)
def test_builtin_constructors_take_plain_data_only(tmp_path, args, match):
    path = tmp_path / "bytearray.pt"
    call = pickle.GLOBAL + b"builtins\nbytearray\n" + pickle.MARK + args + pickle.TUPLE + pickle.REDUCE
    _torch_zip(path, pickle.PROTO + b"\x02" + call + pickle.STOP)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/data/0", bytes(8))
    with pytest.raises(ValueError, match=rf"bytearray\.pt: not a readable torch pickle \(ValueError: {match}"):
        load_pickled_module(path)


def test_compressed_archives_are_refused_before_anything_is_decompressed(tmp_path):
    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.pt"
    torch.save(_module_with_buffers(big=torch.zeros(4096)), plain)
    with zipfile.ZipFile(plain) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    assert bomb.stat().st_size < plain.stat().st_size
    with pytest.raises(ValueError, match=r"bomb\.pt: archive entry 'plain/data\.pkl' is compressed \(zip method 8\)"):
        convert_hsemotion_checkpoint(bomb)
    assert load_pickled_module(plain).buffers["big"].shape == (4096,)  # torch.save's own files are stored


def test_entry_sizes_must_fit_the_file_and_data_pkl_is_capped(tmp_path, monkeypatch):
    from avemotion.models.hsemotion import timm_pickle

    path = tmp_path / "sizes.pt"
    torch.save(_module_with_buffers(big=torch.zeros(4096)), path)
    data = bytearray(path.read_bytes())
    # the central directory entry of the storage (stored, 16384 bytes) claims 2**31 bytes uncompressed
    header = data.rindex(b"PK\x01\x02", 0, data.index(b"sizes/data/0", data.index(b"PK\x01\x02")) + 1)
    data[header + 24 : header + 28] = (2**31).to_bytes(4, "little")
    broken = tmp_path / "claims.pt"
    broken.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"claims\.pt: archive entry 'sizes/data/0' claims 2147483648 bytes"):
        load_pickled_module(broken)
    monkeypatch.setattr(timm_pickle, "MAX_DATA_PKL_BYTES", 100)
    with pytest.raises(ValueError, match=r"sizes\.pt: sizes/data\.pkl holds \d+ bytes; expected at most 100"):
        load_pickled_module(path)
