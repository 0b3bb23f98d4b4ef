"""Inference speed settings (`avemotion.utils.inference`) and half-precision inference of the models: channels-last
gives the NCHW outputs, compile options reach `nn.Module.compile`, TF32 is set and left alone as asked, and bfloat16 /
float16 models (cast or under autocast) give fp32's top label with finite outputs; the benchmarks run on the CPU."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlfusion_testing import make_batch, tiny_config
from torch import nn
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import MultiLevelFusionForEmotionRecognition, VavlForEmotionRecognition
from avemotion.models.mlfusion.modeling_mlfusion import late_fuse_logits
from avemotion.models.mlfusion.segments import pool_segments_matrix
from avemotion.utils.inference import compile_model, prepare_for_inference, set_tf32, use_channels_last

ROOT = Path(__file__).resolve().parents[1]
HALF = [torch.bfloat16, torch.float16]


def _vavl(**overrides) -> VavlForEmotionRecognition:
    visual = tiny_efficientnet_config()
    config = tiny_vavl_config(audio_backbone_config=tiny_wav2vec2_config(), visual_backbone_config=visual,
                              visual_feature_dim=visual.hidden_dim, **overrides)  # fmt: skip
    torch.manual_seed(0)
    return _spread(VavlForEmotionRecognition(config).eval())


def _spread(model: VavlForEmotionRecognition) -> VavlForEmotionRecognition:
    """Trained-like outputs of a random model: wider logits (the top label wins clearly) and BatchNorm statistics
    that take part in the outputs."""
    with torch.no_grad():
        for head in (model.audio_head, model.visual_head, model.fusion_head):
            head.out_proj.weight.mul_(4.0)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _vavl_inputs(seed: int) -> dict[str, torch.Tensor]:
    """Four clips: both modalities (one with padded audio, one with padded video), audio only, video only."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "input_values": torch.randn(4, 4000, generator=generator),
        "attention_mask": torch.ones(4, 4000, dtype=torch.long),
        "pixel_values_videos": torch.randn(4, 5, 3, 32, 32, generator=generator),
        "visual_features_mask": torch.ones(4, 5, dtype=torch.long),
    }
    inputs["attention_mask"][1, 2500:] = 0
    inputs["visual_features_mask"][0, 3:] = 0
    inputs["visual_features_mask"][2] = 0  # row 2: no video
    inputs["attention_mask"][3] = 0  # row 3: no audio
    return inputs


def _fusion(**overrides) -> MultiLevelFusionForEmotionRecognition:
    torch.manual_seed(0)
    model = MultiLevelFusionForEmotionRecognition(tiny_config(**overrides)).eval()
    with torch.no_grad():  # wide logits: the default init (std 0.02) gives near-uniform posteriors, a coin toss
        for head in model.heads.values():
            head.dense.weight.normal_(0.0, 0.5)
            head.out_proj.weight.normal_(0.0, 2.0)
    return model


def _fusion_inputs(seed: int) -> dict[str, torch.Tensor]:
    """Four clips with audio, text and segments; the last one has no text."""
    inputs = make_batch(seconds=(0.5, 0.36, 0.42, 0.3), tokens=(7, 4, 5, 6), generator_seed=seed)
    inputs["text_attention_mask"][3] = 0
    return inputs


def _run(model, inputs, dtype=None, autocast=None) -> torch.Tensor:
    """Logits of `model` (cast to `dtype`, or under autocast to `autocast`) as float32."""
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    context = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), context:
        return model(**inputs).logits.float()


def _assert_same_labels(logits: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    probs, expected = logits.softmax(-1), reference.softmax(-1)
    assert torch.isfinite(logits).all()
    assert float((probs - expected).abs().max()) < tolerance
    # the same top label wherever fp32's wins by more than the half-precision error (a near-tie of a random model
    # may go either way); most rows do
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert int(clear.sum()) >= (len(clear) + 1) // 2
    assert torch.equal(probs.argmax(-1)[clear], expected.argmax(-1)[clear])


# -- channels-last -------------------------------------------------------------------------------------------------


def test_channels_last_vavl_with_an_efficientnet_backbone_gives_the_nchw_outputs():
    model = _vavl()
    inputs = _vavl_inputs(0)
    with torch.no_grad():
        expected = model(**inputs)
    fast = prepare_for_inference(copy.deepcopy(model))  # channels_last=True by default
    assert type(fast) is VavlForEmotionRecognition and fast.config.to_dict() == model.config.to_dict()
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs)  # really NHWC (1x1 kernels are both)
    with torch.no_grad():
        actual = fast(**inputs)
    for name in ("logits", "audio_logits", "visual_logits", "fusion_logits", "visual_pooled_output"):
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-5, equal_nan=True)
    # NHWC frames in (a pipeline may hand them over so) give the same too
    nhwc = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"].flatten(0, 1)
                .contiguous(memory_format=torch.channels_last).view(4, 5, 3, 32, 32))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(fast(**nhwc).logits, expected.logits, rtol=0, atol=1e-5)


def test_channels_last_leaves_models_without_2d_convolutions_alone():
    fusion = _fusion()
    inputs = _fusion_inputs(0)
    with torch.no_grad():
        expected = fusion(**inputs).logits
    strides = {name: p.stride() for name, p in fusion.named_parameters()}
    assert use_channels_last(fusion) is fusion
    assert {name: p.stride() for name, p in fusion.named_parameters()} == strides
    with torch.no_grad():
        torch.testing.assert_close(fusion(**inputs).logits, expected, rtol=0, atol=1e-5)

    plain = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    before = {name: (p.clone(), p.stride()) for name, p in plain.state_dict().items()}
    assert prepare_for_inference(plain) is plain
    for name, p in plain.state_dict().items():
        assert torch.equal(p, before[name][0]) and p.stride() == before[name][1]


# -- torch.compile and TF32 ----------------------------------------------------------------------------------------


def test_compile_options_reach_module_compile(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    model = nn.Linear(2, 2)
    for options in (False, None, 0, {}):
        assert compile_model(model, options) is model
    assert calls == []
    compile_model(model, True)
    compile_model(model, "max-autotune")
    compile_model(model, {"mode": "reduce-overhead", "dynamic": True})
    prepare_for_inference(model, compile="default")
    assert calls == [{}, {"mode": "max-autotune"}, {"mode": "reduce-overhead", "dynamic": True}, {"mode": "default"}]
    for bad in (3, ["max-autotune"], 1.5):
        with pytest.raises(ValueError, match="compile must be a bool, a torch.compile mode name or a dict"):
            compile_model(model, bad)


def test_set_tf32_sets_and_leaves_the_precision():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision, conv.fp32_precision = "ieee", "tf32"
        set_tf32(None)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "tf32")
        prepare_for_inference(nn.Linear(2, 2), allow_tf32=None)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "tf32")
        set_tf32(True)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        prepare_for_inference(nn.Linear(2, 2), allow_tf32=False)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


# -- half precision ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("autocast", [False, True], ids=["cast", "autocast"])
def test_vavl_in_half_precision_keeps_the_top_label(dtype, autocast):
    model = _vavl()
    for seed in (0, 1, 2):
        inputs = _vavl_inputs(seed)
        reference = _run(model, inputs)
        logits = _run(model, inputs, autocast=dtype) if autocast else _run(model, inputs, dtype=dtype)
        _assert_same_labels(logits, reference, tolerance=1e-2)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_vavl_half_model_takes_float32_features_and_normalises_them(dtype):
    model = _spread(VavlForEmotionRecognition(tiny_vavl_config(normalize_visual_features=True)).eval())
    with torch.no_grad():
        model.vavl.visual_features_mean.uniform_(-1.0, 1.0)
        model.vavl.visual_features_std.uniform_(0.5, 2.0)
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        inputs = {
            "audio_features": torch.randn(3, 20, 16, generator=generator),
            "audio_features_mask": torch.ones(3, 20, dtype=torch.long),
            "visual_features": 2.0 * torch.randn(3, 12, 12, generator=generator),
            "visual_features_mask": torch.ones(3, 12, dtype=torch.long),
        }
        inputs["audio_features_mask"][0, 14:] = 0
        inputs["visual_features_mask"][1] = 0  # no video
        reference = _run(model, inputs)
        half = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            logits, encoded = half(**inputs).logits, half.vavl(**inputs)
            expected = model.vavl(**inputs).visual_features
        assert logits.dtype == encoded.visual_features.dtype == dtype
        torch.testing.assert_close(encoded.visual_features.float(), expected, rtol=1e-2, atol=1e-2)
        _assert_same_labels(logits.float(), reference, tolerance=1e-2)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "config",
    [{}, {"audio_layer": "last", "segment_pooling": "cumsum"}, {"_attn_implementation": "eager"}],
    ids=["default", "cumsum", "eager"],
)
def test_fusion_in_half_precision_keeps_the_top_label(dtype, config):
    model = _fusion(**config)
    for seed in (0, 1):
        inputs = _fusion_inputs(seed)
        reference = _run(model, inputs)
        for logits in (_run(model, inputs, dtype=dtype), _run(model, inputs, autocast=dtype)):
            _assert_same_labels(logits, reference, tolerance=1e-2)


def test_fusion_half_model_takes_float32_cached_features():
    model = _fusion(audio_layer="last", fusion_members=["audio_frame", "text"])
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "audio_features": torch.randn(3, 15, 32, generator=generator),
        "audio_features_mask": torch.ones(3, 15, dtype=torch.long),
        "text_features": torch.randn(3, 6, 32, generator=generator),
        "text_attention_mask": torch.ones(3, 6, dtype=torch.long),
    }
    inputs["text_attention_mask"][1] = 0  # no text
    _assert_same_labels(_run(model, inputs, dtype=torch.bfloat16), _run(model, inputs), tolerance=1e-2)


def test_half_precision_fusion_and_segment_pooling_compute_in_float32():
    generator = torch.Generator().manual_seed(0)
    logits = [(3 * torch.randn(4, 5, generator=generator)).bfloat16() for _ in range(3)]
    masks = [torch.tensor([True, True, False, True]), torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)]
    for mode in ("mean_prob", "mean_logprob"):
        fused = late_fuse_logits(logits, mode, masks=masks)
        assert fused.dtype == torch.bfloat16
        expected = late_fuse_logits([x.float() for x in logits], mode, masks=masks)
        assert torch.equal(fused, expected.bfloat16())
    hidden = torch.randn(2, 9, 4, generator=generator).bfloat16()
    matrix = torch.zeros(2, 3, 9, dtype=torch.float64)
    matrix[:, 0, :3], matrix[:, 1, 3:], matrix[:, 2, 4] = 1 / 3, 1 / 6, 1.0
    pooled = pool_segments_matrix(hidden, matrix)
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, torch.bmm(matrix.float(), hidden.float()).bfloat16())


# -- benchmarks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("bench_*.py")))
def test_benchmark_help_runs(script):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--device" in result.stdout


def test_bench_inference_tiny_cpu_run(tmp_path):
    output = tmp_path / "inference.json"
    command = [sys.executable, str(ROOT / "bench" / "bench_inference.py"), "--device", "cpu", "--tiny",
               "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["device"]["type"] == "cpu" and report["all_same_top_label"]
    modes = {(row["model"], row["mode"]) for row in report["rows"]}
    assert {("vavl", "fp32"), ("vavl", "fp32-cl"), ("vavl", "bf16-cl"), ("fusion", "bf16-cl")} <= modes
    for row in report["rows"]:
        assert [entry["batch"] for entry in row["batches"]] == [1, 3]
        assert all(entry["clips_per_s"] > 0 for entry in row["batches"])
    assert "Inference throughput on cpu" in result.stdout
