"""The converter against the fixture made from the original VAVL code (shared/fixtures/vavl_parity)."""

import importlib.util
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, Wav2Vec2Model
from vavl_testing import tiny_wav2vec2_config

from avemotion import AvEmotionFeatureExtractor, VavlForEmotionRecognition, VavlModel
from avemotion.cli import main as cli_main
from avemotion.models.vavl.convert_vavl_original_checkpoint import (
    ConversionError,
    convert_vavl_checkpoint,
    load_normalization_stats,
)

# shared/ lies beside the repository (CI clones main next to it); AVEMOTION_SHARED_DIR overrides.
SHARED = Path(os.environ.get("AVEMOTION_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures" / "vavl_parity"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/vavl_parity not found beside the repo")
HEAD_FILES = [
    "final_acoustic_head.pt",
    "final_visual_head.pt",
    "final_shared_head.pt",
    "MLP_a_head.pt",
    "MLP_v_head.pt",
    "MLP_av_head.pt",
    "final_weights_head.pt",
    "MLP_rec_a_head.pt",
    "MLP_rec_v_head.pt",
]


def _load_fixture_writer():
    spec = importlib.util.spec_from_file_location("vavl_weights", FIXTURES / "vavl_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory) -> Path:
    """The nine head files of the original code, with the fixture's deterministic weights (seed 21)."""
    directory = tmp_path_factory.mktemp("original")
    spec = json.loads((FIXTURES / "vavl_cremad_spec.json").read_text())
    _load_fixture_writer().write_original_checkpoint(spec, 21, str(directory))
    return directory


@pytest.fixture(scope="module")
def converted_dir(original_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("converted")
    assert (
        cli_main(
            ["convert-vavl", "--checkpoint-dir", str(original_dir), "--output-dir", str(output), "--preset", "crema-d"]
        )
        == 0
    )
    return output


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "vavl_cremad_io.npz"))


@pytest.mark.parametrize("prefix", ["b2_", "b1_"])
def test_converted_checkpoint_reproduces_the_original_outputs(converted_dir, reference, prefix):
    # the original's batch-2 outputs mix the two clips: reproduced only with `legacy_batch_mixing`
    mixing = {"legacy_batch_mixing": True} if prefix == "b2_" else {}
    model = VavlForEmotionRecognition.from_pretrained(converted_dir, **mixing).eval()
    assert model.config.legacy_batch_axis_attention
    with torch.no_grad():
        out = model(
            audio_features=torch.from_numpy(reference[prefix + "audio_features"]),
            visual_features=torch.from_numpy(reference[prefix + "visual_features"]),
        )
    for name, value in [
        ("pred_a", out.audio_logits),
        ("pred_v", out.visual_logits),
        ("pred_av", out.fusion_logits),
        ("rep_a", out.audio_pooled_output),
        ("rep_v", out.visual_pooled_output),
    ]:
        np.testing.assert_allclose(value.numpy(), reference[prefix + name], atol=1e-5, rtol=0, err_msg=name)
    # `logits` is the fusion head when both modalities are given
    np.testing.assert_allclose(out.logits.numpy(), reference[prefix + "pred_av"], atol=1e-5, rtol=0)


def test_converted_checkpoint_loads_with_auto_model(converted_dir, reference):
    base = AutoModel.from_pretrained(converted_dir, legacy_batch_mixing=True).eval()
    assert type(base) is VavlModel
    with torch.no_grad():
        out = base(audio_features=torch.from_numpy(reference["b2_audio_features"]))
    np.testing.assert_allclose(out.audio_pooled_output.numpy(), reference["b2_rep_a"], atol=1e-5, rtol=0)
    feature_extractor = AvEmotionFeatureExtractor.from_pretrained(converted_dir)
    assert feature_extractor.normalization == "none"  # no train_norm_stat.pkl in this directory


def test_default_layout_differs_from_legacy_on_batches(converted_dir, reference):
    legacy = VavlForEmotionRecognition.from_pretrained(converted_dir).eval()
    default = VavlForEmotionRecognition.from_pretrained(
        converted_dir, legacy_batch_axis_attention=False, position_encoding="relative"
    ).eval()
    inputs = {"audio_features": torch.from_numpy(reference["b2_audio_features"])}
    with torch.no_grad():
        assert not torch.allclose(legacy(**inputs).audio_logits, default(**inputs).audio_logits, atol=1e-4)


def test_converted_checkpoint_is_batch_independent_by_default(converted_dir, reference):
    """Without `legacy_batch_mixing`, a converted model scores each clip of a batch as the original scores it
    alone (batch 1), so pipelines and evaluation do not depend on the batch size."""
    model = VavlForEmotionRecognition.from_pretrained(converted_dir).eval()
    assert not model.config.legacy_batch_mixing
    audio = torch.from_numpy(reference["b2_audio_features"])
    video = torch.from_numpy(reference["b2_visual_features"])
    with torch.no_grad():
        batched = model(audio_features=audio, visual_features=video)
        mixed = VavlForEmotionRecognition.from_pretrained(converted_dir, legacy_batch_mixing=True).eval()(
            audio_features=audio, visual_features=video
        )
        for row in range(audio.shape[0]):
            alone = model(audio_features=audio[row : row + 1], visual_features=video[row : row + 1])
            torch.testing.assert_close(batched.logits[row], alone.logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.audio_logits[row], alone.audio_logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.visual_logits[row], alone.visual_logits[0], atol=1e-5, rtol=0)
    assert (batched.logits - mixed.logits).abs().max() > 1e-4  # the option really restores the mixing


def _copy_heads(source: Path, target: Path, skip=()):
    target.mkdir()
    for name in HEAD_FILES:
        if name not in skip:
            (target / name).write_bytes((source / name).read_bytes())


def test_missing_file_is_named(original_dir, tmp_path):
    _copy_heads(original_dir, tmp_path / "ckpt", skip={"MLP_v_head.pt"})
    with pytest.raises(ConversionError, match="MLP_v_head.pt"):
        convert_vavl_checkpoint(tmp_path / "ckpt", preset="crema-d")


def test_unknown_and_misshaped_keys_are_named(original_dir, tmp_path):
    _copy_heads(original_dir, tmp_path / "unknown")
    state = torch.load(original_dir / "final_shared_head.pt", weights_only=True)
    state["x_shared.encoder.extra_layer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "unknown" / "final_shared_head.pt")
    with pytest.raises(ConversionError, match=r"final_shared_head.pt: unexpected key 'x_shared.encoder.extra_layer"):
        convert_vavl_checkpoint(tmp_path / "unknown", preset="crema-d")

    _copy_heads(original_dir, tmp_path / "shape")
    state = torch.load(original_dir / "MLP_rec_v_head.pt", weights_only=True)
    state["projav2.weight"] = torch.zeros(256, 100)
    torch.save(state, tmp_path / "shape" / "MLP_rec_v_head.pt")
    with pytest.raises(ConversionError, match=r"MLP_rec_v_head.pt: 'visual_reconstruction_head.projections.1.weight'"):
        convert_vavl_checkpoint(tmp_path / "shape", preset="crema-d")

    _copy_heads(original_dir, tmp_path / "missing")
    state = torch.load(original_dir / "final_acoustic_head.pt", weights_only=True)
    del state["x_acoustic.encoder.layers.1.sequential.2.module.sequential.4.conv.weight"]
    torch.save(state, tmp_path / "missing" / "final_acoustic_head.pt")
    with pytest.raises(
        ConversionError,
        match=r"final_acoustic_head.pt: no tensor for model key "
        r"'vavl.audio_encoder.conformer.layers.1.conv_module.depthwise_conv",
    ):
        convert_vavl_checkpoint(tmp_path / "missing", preset="crema-d")


def test_label_count_must_match(original_dir):
    with pytest.raises(ConversionError, match="6 outputs but the chosen labels have 3"):
        convert_vavl_checkpoint(original_dir, preset="msp-improv")
    model = convert_vavl_checkpoint(original_dir, task="classification", labels=list("abcdef"))
    assert model.config.id2label[5] == "f"


def test_wav2vec2_and_normalisation_statistics(original_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    _copy_heads(original_dir, checkpoint)
    # a small front-end with the original's width (1024), saved with the old weight-norm names
    w2v_config = tiny_wav2vec2_config(
        hidden_size=1024, num_hidden_layers=1, num_attention_heads=4, num_conv_pos_embedding_groups=4
    )
    wav2vec2 = Wav2Vec2Model(w2v_config).eval()
    legacy_names = {
        key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): tensor
        for key, tensor in wav2vec2.state_dict().items()
    }
    assert "encoder.pos_conv_embed.conv.weight_g" in legacy_names
    torch.save(legacy_names, checkpoint / "final_wav2vec.pt")
    vid_mean = np.linspace(-1, 1, 1408).astype(np.float32)
    vid_std = np.linspace(0.5, 2, 1408).astype(np.float32)
    with open(checkpoint / "train_norm_stat.pkl", "wb") as handle:
        pickle.dump((np.float32(0.01), np.float32(0.2), vid_mean, vid_std), handle)
    config_file = tmp_path / "w2v.json"
    w2v_config.to_json_file(config_file)

    output = tmp_path / "out"
    assert (
        cli_main(
            [
                "convert-vavl",
                "--checkpoint-dir",
                str(checkpoint),
                "--output-dir",
                str(output),
                "--preset",
                "crema-d",
                "--audio-backbone-config",
                str(config_file),
            ]
        )
        == 0
    )
    model = VavlForEmotionRecognition.from_pretrained(output).eval()
    waveform = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(
            model.vavl.audio_backbone(waveform).last_hidden_state, wav2vec2(waveform).last_hidden_state
        )
    assert model.config.normalize_visual_features
    np.testing.assert_allclose(model.vavl.visual_features_std.numpy(), vid_std)
    feature_extractor = AvEmotionFeatureExtractor.from_pretrained(output)
    assert feature_extractor.normalization == "global"
    assert feature_extractor.global_mean == pytest.approx(0.01) and feature_extractor.global_std == pytest.approx(0.2)
    # the model standardises visual features with the stored statistics: (x - mean) / (std + 1e-6)
    features = torch.from_numpy(vid_mean + 3 * (vid_std + 1e-6)).expand(1, 2, 1408)
    with torch.no_grad():
        standardised = model.vavl(visual_features=features).visual_features
    torch.testing.assert_close(standardised, torch.full_like(standardised, 3.0), atol=1e-4, rtol=0)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _dotted_name_exploit(marker: Path) -> bytes:
    """numpy.dtypes.__builtins__.get("eval")(code) by protocol 4's dotted-name lookup (accepted before issue 10)."""

    def text(value: str) -> bytes:
        return pickle.BINUNICODE + len(value.encode()).to_bytes(4, "little") + value.encode()

    code = f"open({str(marker)!r}, 'w').write('code ran')"
    return (
        pickle.PROTO + b"\x04" + text("numpy.dtypes") + text("__builtins__.get") + pickle.STACK_GLOBAL
        + text("eval") + pickle.TUPLE1 + pickle.REDUCE + text(code) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    )  # fmt: skip


def test_normalisation_pickle_is_read_with_a_restricted_unpickler(original_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    _copy_heads(original_dir, checkpoint)
    marker = tmp_path / "marker"
    with open(checkpoint / "train_norm_stat.pkl", "wb") as handle:
        pickle.dump((_Exploit(marker), 1.0, np.zeros(1408), np.ones(1408)), handle)
    with pytest.raises(ConversionError, match=r"train_norm_stat.pkl: refusing to load (posix|nt)\.system"):
        convert_vavl_checkpoint(checkpoint, preset="crema-d")
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["cli", "module"])
def test_crafted_normalisation_pickle_fails_cleanly_in_the_cli(original_dir, tmp_path, capsys, entry):
    checkpoint = tmp_path / "ckpt"
    _copy_heads(original_dir, checkpoint)
    marker = tmp_path / "marker"
    (checkpoint / "train_norm_stat.pkl").write_bytes(_dotted_name_exploit(marker))
    args = ["--checkpoint-dir", str(checkpoint), "--output-dir", str(tmp_path / "out"), "--preset", "crema-d"]
    if entry == "cli":
        assert cli_main(["convert-vavl", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err  # one line, no traceback
    else:
        module = sys.modules["avemotion.models.vavl.convert_vavl_original_checkpoint"]
        with pytest.raises(ConversionError) as info:
            module.main(args)
        err = str(info.value)
    assert f"{checkpoint / 'train_norm_stat.pkl'}: refusing to load numpy.dtypes.__builtins__.get" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_crafted_state_dict_is_refused_by_torch_weights_only(original_dir, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    _copy_heads(original_dir, checkpoint)
    marker = tmp_path / "marker"
    torch.save({"out_layer.weight": _Exploit(marker)}, checkpoint / "MLP_a_head.pt")
    args = [
        "convert-vavl",
        "--checkpoint-dir",
        str(checkpoint),
        "--output-dir",
        str(tmp_path / "o"),
        "--preset",
        "crema-d",
    ]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{checkpoint / 'MLP_a_head.pt'}: cannot be read as a tensor state dict" in err and "system" in err
    assert "weights_only` set to `False`" not in err  # torch's advice to load unsafely is not passed on
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_normalisation_pickles_of_every_protocol_load(tmp_path, protocol):
    vid_mean = np.linspace(-1, 1, 1408)  # float64, as numpy writes it by default
    with open(tmp_path / "train_norm_stat.pkl", "wb") as handle:
        pickle.dump((np.float64(0.01), np.float32(0.2), vid_mean, vid_mean.astype(np.float32) + 2), handle, protocol)
    stats = load_normalization_stats(tmp_path / "train_norm_stat.pkl")
    assert stats["wav_mean"] == pytest.approx(0.01) and stats["wav_std"] == pytest.approx(0.2)
    np.testing.assert_allclose(stats["vid_mean"], vid_mean, rtol=1e-6)
    np.testing.assert_allclose(stats["vid_std"], vid_mean + 2, rtol=1e-6)


@pytest.mark.parametrize(
    "stats, message",
    [
        ((["a"], 1.0, {}, 2), r"wav_mean must be a number, got list of shape \(1,\) and dtype <U1"),
        (("0.5", 1.0, [0.0] * 1408, [1.0] * 1408), r"wav_mean must be a number, got str"),
        ((0.0, [1.0, 2.0], [0.0] * 1408, [1.0] * 1408), r"wav_std must be a number, got list of shape \(2,\)"),
        ((0.0, 1.0, {}, [1.0] * 1408), r"vid_mean must be 1408 numbers, got dict"),
        ((0.0, 1.0, [0.0] * 1408, [[1.0], [1.0, 2.0]]), r"vid_std must be 1408 numbers, got list"),
    ],
)
def test_normalisation_pickle_of_the_wrong_content_names_the_file(tmp_path, stats, message):
    # builtins only (protocol 4): the restricted unpickler loads it, the content check must refuse it cleanly
    with open(tmp_path / "train_norm_stat.pkl", "wb") as handle:
        pickle.dump(stats, handle, protocol=4)
    with pytest.raises(ConversionError, match=rf"^train_norm_stat.pkl: {message}"):
        load_normalization_stats(tmp_path / "train_norm_stat.pkl")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert (
        cli_main(
            [
                "convert-vavl",
                "--checkpoint-dir",
                str(tmp_path),
                "--output-dir",
                str(tmp_path / "o"),
                "--task",
                "classification",
            ]
        )
        == 2
    )
    assert "give --preset" in capsys.readouterr().err
    module = sys.modules["avemotion.models.vavl.convert_vavl_original_checkpoint"]
    with pytest.raises(ConversionError, match="missing original checkpoint file"):
        module.main(["--checkpoint-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--preset", "crema-d"])
