"""VAVL's forward without device-to-host synchronisations (issue 14): the same numbers as a plain row-selecting
reference written here, for every batch composition, and the number of host reads of a training step."""

import collections
import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

from avemotion import VavlForEmotionRecognition
from avemotion.utils.masking import masked_mean

BATCH = 5
COMPOSITIONS = ["paired", "no_audio_rows", "no_video_rows", "mixed", "audio_only", "video_only"]
LEGACY = {
    "legacy": dict(legacy_batch_axis_attention=True, position_encoding="legacy_shifted"),
    "mixing": dict(legacy_batch_axis_attention=True, position_encoding="legacy_shifted", legacy_batch_mixing=True),
}
REGRESSION = dict(problem_type="regression", label_scale=[1.0, 5.0])


def make_batch(composition: str, padded: bool = True, regression: bool = False, seed: int = 0) -> dict:
    """Features for BATCH rows; some rows without audio or video (all-zero masks) depending on `composition`."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, frames in (("audio", 9), ("video", 6)):
        mask = torch.ones(BATCH, frames, dtype=torch.long)
        if padded:  # random lengths, the longest possibly shorter than the padded width
            for row in range(BATCH):
                mask[row, int(torch.randint(1, frames + 1, (1,), generator=generator)) :] = 0
        masks[name] = mask
    absent = {"no_audio_rows": ("audio", [1, 3]), "no_video_rows": ("video", [0, 4]), "mixed": ("audio", [1])}
    if composition in absent:
        name, rows = absent[composition]
        masks[name][rows] = 0
    if composition == "mixed":
        masks["video"][2] = 0
    batch = {}
    if composition != "video_only":
        batch.update(audio_features=torch.randn(BATCH, 9, 16, generator=generator), audio_features_mask=masks["audio"])
    if composition != "audio_only":
        batch.update(
            visual_features=torch.randn(BATCH, 6, 12, generator=generator), visual_features_mask=masks["video"]
        )
    labels = torch.rand(BATCH, 3, generator=generator) * 4 + 1 if regression else torch.arange(BATCH) % 3
    return {**batch, "labels": labels}


# ------------------------------------------------------------------------------------------ reference (rows selected)


def reference_encode(model, features: torch.Tensor, mask: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    """Pooled (B, H) vectors, zeros on rows without the modality: the modality's rows selected with boolean masks,
    cut to their longest clip (legacy: each clip alone, or with `legacy_batch_mixing` the padding included)."""
    base, config = model.vavl, model.config
    rows = mask.any(dim=-1)
    pooled = features.new_zeros(features.shape[0], config.hidden_size)
    if config.legacy_batch_axis_attention and not config.legacy_batch_mixing:
        for row in rows.nonzero().flatten().tolist():
            clip = features[row : row + 1, mask[row]]
            hidden = base.shared_encoder(encoder(clip, None, True), None, True)
            pooled[row] = hidden.mean(dim=1)[0]
        return pooled
    longest = int(mask[rows].any(dim=0).nonzero().max()) + 1
    sub_features, sub_mask = features[rows][:, :longest], mask[rows][:, :longest]
    legacy = config.legacy_batch_axis_attention
    hidden = encoder(sub_features, None if legacy else sub_mask, legacy)
    hidden = base.shared_encoder(hidden, None if legacy else sub_mask, legacy)
    pooled[rows] = masked_mean(hidden, None if legacy else sub_mask)
    return pooled


def reference_forward(model, features: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor) -> dict:
    """Heads and losses of VAVL on the selected rows of each modality (NaN logits elsewhere), as plainly as possible.
    `features`: modality -> (features, bool mask) of the modalities given."""
    heads = {"audio": (model.audio_head, model.audio_reconstruction_head, model.vavl.audio_encoder),
             "video": (model.visual_head, model.visual_reconstruction_head, model.vavl.visual_encoder)}  # fmt: skip
    result, pooled, present = {}, {}, {}
    for name, (values, mask) in features.items():
        if mask.any():
            pooled[name], present[name] = reference_encode(model, values, mask, heads[name][2]), mask.any(dim=-1)
    for name, rows in present.items():
        head, reconstruction_head = heads[name][:2]
        logits = torch.full((BATCH, model.config.num_labels), float("nan"))
        logits[rows] = head(pooled[name][rows])
        values, mask = features[name]
        pool_mask = model.vavl.pooling_mask(mask)
        target = masked_mean(values[rows], pool_mask[rows]).detach()
        reconstruction = nn.functional.mse_loss(reconstruction_head(pooled[name][rows]), target)
        loss = model.task_loss(logits[rows], labels[rows]) + model.config.reconstruction_loss_weight * reconstruction
        prefix = "audio" if name == "audio" else "visual"
        result.update(
            {f"{prefix}_logits": logits, f"{prefix}_loss": loss, f"{prefix}_reconstruction_loss": reconstruction}
        )
    if len(present) == 2:
        both = present["audio"] & present["video"]
        logits = torch.full((BATCH, model.config.num_labels), float("nan"))
        logits[both] = model.fusion_head(torch.cat([pooled["audio"], pooled["video"]], dim=-1)[both])
        result["fusion_logits"] = logits
        if both.any():
            result["fusion_loss"] = model.task_loss(logits[both], labels[both])
    result["loss"] = sum(result[key] for key in ("audio_loss", "visual_loss", "fusion_loss") if key in result)
    return result


def feature_inputs(batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    if "audio_features" in batch:
        out["audio"] = (batch["audio_features"], batch["audio_features_mask"].bool())
    if "visual_features" in batch:
        out["video"] = (batch["visual_features"], batch["visual_features_mask"].bool())
    return out


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(model_output, reference: dict, atol: float = 0.0) -> None:
    for key, expected in reference.items():
        actual = model_output[key]
        assert actual is not None, key
        if atol == 0.0:
            assert torch.equal(actual.isnan(), expected.isnan()), key
            assert torch.equal(actual.nan_to_num(), expected.nan_to_num()), key
        else:
            torch.testing.assert_close(actual, expected, atol=atol, rtol=0, equal_nan=True, msg=key)


def compare(config_overrides: dict, batch: dict, features: dict | None = None, mode: str = "train") -> None:
    """The model against the reference on copies of one model: outputs, gradients of `loss`, BatchNorm statistics.
    Dropout off (the dropout draws differ in number between a selection and the full batch by design of neither);
    train mode keeps the BatchNorms on batch statistics (the masked path)."""
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(tiny_vavl_config(conformer_dropout=0.0, head_dropout=0.0, **config_overrides))
    model.train(mode == "train")
    reference_model = copy.deepcopy(model)
    labels = batch.pop("labels")
    output = model(**batch, labels=labels)
    expected = reference_forward(reference_model, features or feature_inputs(batch), labels)
    assert_same(output, expected)
    expected_routed = expected.get("fusion_logits", torch.full((BATCH, 3), float("nan")))
    for name in ("audio_logits", "visual_logits"):
        if name in expected:
            expected_routed = torch.where(expected_routed.isnan(), expected[name], expected_routed)
    assert torch.equal(output.logits, expected_routed)
    output.loss.backward()
    expected["loss"].backward()
    actual_grads, expected_grads = gradients(model), gradients(reference_model)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert torch.equal(actual_grads[name], grad), name
    for (name, actual), expected_buffer in zip(model.named_buffers(), reference_model.buffers()):
        assert torch.equal(actual, expected_buffer), name


@pytest.mark.parametrize("composition", COMPOSITIONS)
@pytest.mark.parametrize("preset", ["categorical", "regression"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_equal_to_row_selecting_reference(composition, preset, mode):
    regression = preset == "regression"
    for padded in (False, True):
        compare(REGRESSION if regression else {}, make_batch(composition, padded, regression), mode=mode)


@pytest.mark.parametrize("composition", ["paired", "mixed", "no_video_rows", "audio_only"])
@pytest.mark.parametrize("legacy", ["legacy", "mixing"])
def test_legacy_layout_equal_to_reference(composition, legacy):
    compare(LEGACY[legacy], make_batch(composition, padded=True))


@pytest.mark.parametrize("composition", ["paired", "mixed"])
def test_raw_backbone_inputs_equal_to_reference(composition):
    """Waveforms and face crops through tiny backbones: the reference takes the backbones' own features."""
    torch.manual_seed(0)
    overrides = dict(
        audio_backbone_config=tiny_wav2vec2_config(),
        visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128,
        freeze_audio_backbone=True,
        freeze_visual_backbone=True,
    )
    generator = torch.Generator().manual_seed(1)
    waves, attention_mask = torch.randn(BATCH, 3200, generator=generator), torch.ones(BATCH, 3200, dtype=torch.long)
    for row in range(BATCH):
        attention_mask[row, 1600 + 300 * row :] = 0
    frames, frames_mask = torch.randn(BATCH, 4, 3, 32, 32, generator=generator), torch.ones(BATCH, 4, dtype=torch.long)
    frames_mask[0, 2:] = 0
    if composition == "mixed":
        attention_mask[1] = 0
        frames_mask[3] = 0
    batch = dict(input_values=waves, attention_mask=attention_mask, pixel_values_videos=frames)
    batch.update(visual_features_mask=frames_mask, labels=torch.arange(BATCH) % 3)
    probe = VavlForEmotionRecognition(tiny_vavl_config(**overrides)).eval()
    with torch.no_grad():
        audio, audio_mask = probe.vavl.get_audio_features(waves, attention_mask)
        video = probe.vavl.get_visual_features(frames, frames_mask.bool())
    features = {"audio": (audio, audio_mask), "video": (video, frames_mask.bool())}
    compare(overrides, batch, features, mode="eval")


def test_fusion_step_loss_equal_to_eval_encoders_and_flags_restored():
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(tiny_vavl_config(freeze_visual_backbone=True)).train()
    model.vavl.audio_encoder.conformer.layers[0].eval()  # an odd flag: kept as it was
    flags = [module.training for module in model.modules()]
    reference_model = copy.deepcopy(model)
    batch = make_batch("paired")
    labels = batch.pop("labels")
    calls = collections.Counter()
    original_train = nn.Module.train

    def counting_train(self, mode=True):
        calls["train"] += 1
        return original_train(self, mode)

    nn.Module.train = counting_train
    try:
        torch.manual_seed(3)
        loss = model.fusion_step_loss(labels, **batch)
    finally:
        nn.Module.train = original_train
    assert calls["train"] == 0  # no recursive train()/eval() per step
    assert [module.training for module in model.modules()] == flags
    for module in reference_model.vavl.modules():
        module.training = False
    with torch.no_grad():
        pooled = reference_model.vavl(**batch)
    fused = torch.cat([pooled.audio_pooled_output, pooled.visual_pooled_output], dim=-1)
    torch.manual_seed(3)
    expected = reference_model.task_loss(reference_model.fusion_head(fused), labels)
    assert torch.equal(loss, expected)
    loss.backward()
    expected.backward()
    assert gradients(model).keys() == {f"fusion_head.{n}" for n, _ in model.fusion_head.named_parameters()}
    for name, grad in gradients(reference_model).items():
        assert torch.equal(gradients(model)[name], grad), name


def test_nan_features_on_rows_without_the_modality_do_not_reach_other_rows():
    """A row without video whose (unused) video features are NaN: no NaN in the losses or in other rows."""
    batch = make_batch("no_video_rows")
    batch["visual_features"][0] = float("nan")
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(tiny_vavl_config()).train()
    labels = batch.pop("labels")
    output = model(**batch, labels=labels)
    assert torch.isfinite(output.loss) and torch.isfinite(output.visual_loss)
    assert output.visual_logits[[0, 4]].isnan().all() and not output.visual_logits[1:4].isnan().any()
    assert not output.logits.isnan().any()


class HostReads(TorchDispatchMode):
    """Counts the operations that read the device from the host (or may: boolean indexing sizes its output)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
    READS |= {torch.ops.aten.masked_select.default}
    INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default}

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in self.INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in self.READS or boolean_index:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counts, tolist = self.counts, self._tolist

        def counting_tolist(tensor):
            counts["tolist"] += 1
            return tolist(tensor)

        torch.Tensor.tolist = counting_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


@pytest.mark.parametrize("composition", ["paired", "mixed"])
def test_one_host_read_per_training_step(composition):
    """The masks are read to the host once per forward (which rows and frames run); nothing else reads the device,
    backward included, with padded clips (BatchNorm over real frames) and rows missing a modality."""
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(tiny_vavl_config()).train()
    batch = make_batch(composition)
    with HostReads() as reads:
        model(**batch).loss.backward()
    assert dict(reads.counts) == {"tolist": 1}
    if composition == "paired":
        labels = batch.pop("labels")
        with HostReads() as reads:
            model.fusion_step_loss(labels, **batch).backward()
        assert dict(reads.counts) == {"tolist": 1}
