"""AvEmotionCollator: padding, masks, missing modalities, labels; and its batches run through a tiny VAVL."""

import numpy as np
import pytest
import torch
from vavl_testing import AUDIO_DIM, VISUAL_DIM, tiny_vavl_config

from avemotion import VavlForEmotionRecognition
from avemotion.data.collators import AvEmotionCollator


def test_pads_every_modality_with_masks_and_zero_rows_for_missing():
    rows = [
        {"input_values": np.ones(5), "visual_features": np.ones((2, 3)), "label": 1},
        {"input_values": np.ones(3), "visual_features": None, "label": 0},
        {"input_values": None, "visual_features": np.ones((4, 3)), "label": 2},
    ]
    batch = AvEmotionCollator()(rows)
    assert batch["input_values"].shape == (3, 5) and batch["visual_features"].shape == (3, 4, 3)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0], [0] * 5]
    assert batch["visual_features_mask"].tolist() == [[1, 1, 0, 0], [0] * 4, [1] * 4]
    assert batch["visual_features"][0, 2:].abs().sum() == 0 and batch["input_values"][2].abs().sum() == 0
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 2]
    assert "audio_features" not in batch and "pixel_values_videos" not in batch


def test_attribute_labels_pixels_and_errors():
    rows = [
        {"pixel_values_videos": np.zeros((2, 3, 8, 8)), "arousal": 1.0, "valence": 2.0, "id": "a"},
        {"pixel_values_videos": np.zeros((1, 3, 8, 8)), "arousal": 3.0, "valence": 4.0, "id": "b"},
    ]
    batch = AvEmotionCollator(label_column=["arousal", "valence"], keep_columns=("id",), pad_to_multiple_of=4)(rows)
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 8, 8) and batch["visual_features_mask"].sum() == 3
    assert batch["labels"].tolist() == [[1.0, 2.0], [3.0, 4.0]] and batch["id"] == ["a", "b"]
    with pytest.raises(ValueError, match="no value for label"):
        AvEmotionCollator(label_column=["arousal"])([{"audio_features": np.ones((2, 3)), "arousal": None}])
    with pytest.raises(ValueError, match="expected \\(length"):
        AvEmotionCollator(label_column=None)(
            [{"audio_features": np.ones((2, 3))}, {"audio_features": np.ones((2, 4))}]
        )


def test_collated_batch_matches_single_rows_in_vavl():
    model = VavlForEmotionRecognition(tiny_vavl_config()).eval()
    rng = np.random.default_rng(0)
    rows = [
        {
            "audio_features": rng.normal(size=(6, AUDIO_DIM)),
            "visual_features": rng.normal(size=(3, VISUAL_DIM)),
            "label": 0,
        },
        {"audio_features": rng.normal(size=(4, AUDIO_DIM)), "visual_features": None, "label": 1},
        {"audio_features": None, "visual_features": rng.normal(size=(5, VISUAL_DIM)), "label": 2},
    ]
    collate = AvEmotionCollator()
    with torch.no_grad():
        batched = model(**collate(rows))
        for index, row in enumerate(rows):
            single = collate([row])
            single_out = model(**single)
            torch.testing.assert_close(batched.logits[index], single_out.logits[0], atol=1e-5, rtol=1e-4)


def test_text_and_segments_for_the_multilevel_fusion_model(tmp_path):
    from mlfusion_testing import tiny_tokenizer

    rows = [
        # IEMOCAP builder's columns: segments as {"start", "end", "label"} dicts
        {"input_ids": [2, 5, 6, 3], "token_type_ids": [0, 0, 0, 0], "label": 0,
         "words": [{"start": 0.0, "end": 0.3, "label": "HI"}, {"start": 0.3, "end": 0.5, "label": "YOU"}],
         "phones": None},
        # the model's own names: (start, end[, label]) tuples or an (N, 2) array
        {"input_ids": np.array([2, 7, 3]), "label": 1, "word_segments": [(0.1, 0.2, "A")],
         "phone_segments": np.array([[0.0, 0.1], [0.1, 0.15], [0.15, 0.2]])},
        {"input_ids": None, "label": 2},  # no text, no alignment
    ]  # fmt: skip
    batch = AvEmotionCollator()(rows)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0], [0, 0, 0, 0]]
    assert batch["text_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert batch["token_type_ids"].shape == (3, 4) and batch["token_type_ids"].abs().sum() == 0
    assert batch["word_segments"].shape == (3, 2, 2) and batch["phone_segments"].shape == (3, 3, 2)
    torch.testing.assert_close(batch["word_segments"][0], torch.tensor([[0.0, 0.3], [0.3, 0.5]]))
    torch.testing.assert_close(batch["word_segments"][1, 0], torch.tensor([0.1, 0.2]))
    assert batch["word_segments_mask"].tolist() == [[True, True], [True, False], [False, False]]
    assert batch["phone_segments_mask"].tolist() == [[False] * 3, [True] * 3, [False] * 3]
    assert "syllable_segments" not in batch and "attention_mask" not in batch

    # raw text: tokenised (and truncated) with a tokenizer; without one, mixing text and ids is an error
    tokenizer = tiny_tokenizer(tmp_path)
    text_rows = [{"text": "i am so happy today", "label": 0}, {"text": None, "label": 1}, {"text": "sad", "label": 2}]
    batch = AvEmotionCollator(tokenizer=tokenizer, max_text_length=4)(text_rows)
    expected = tokenizer("i am so happy today", truncation=True, max_length=4)["input_ids"]
    assert len(expected) == 4 and batch["input_ids"][0].tolist() == expected
    short = tokenizer("sad", truncation=True, max_length=4)["input_ids"]
    assert batch["text_attention_mask"].sum(-1).tolist() == [4, 0, len(short)]
    assert batch["input_ids"][2, : len(short)].tolist() == short and batch["input_ids"][1].tolist() == [0] * 4
    assert "token_type_ids" in batch
    with pytest.raises(ValueError, match="has `text` but no `input_ids`"):
        AvEmotionCollator()([{"input_ids": [2, 3], "label": 0}, {"text": "sad", "label": 1}])
    with pytest.raises(ValueError, match="both `word_segments` and `words`"):
        AvEmotionCollator()([{"word_segments": [(0, 1)], "words": [(0, 1)], "label": 0}])
    with pytest.raises(ValueError, match="must be \\(start, end"):
        AvEmotionCollator()([{"words": [(0.5,)], "label": 0}])


def test_absent_modalities_never_look_present():
    """Issue 10 item 3: an absent modality is an all-zero mask row and nothing else of it looks present (segments
    and text of a row without them are zeros); empty values and mixed input kinds are errors naming the row."""
    rows = [
        {"input_values": np.ones(800), "input_ids": [5, 6, 7], "label": 0},
        {"input_values": None, "input_ids": [8, 9], "label": 1},  # text only
        {"input_values": np.ones(400), "input_ids": None, "label": 2},  # audio only
    ]
    batch = AvEmotionCollator()(rows)
    assert batch["attention_mask"].any(dim=-1).tolist() == [True, False, True]
    assert batch["text_attention_mask"].any(dim=-1).tolist() == [True, True, False]
    assert batch["token_type_ids"].abs().sum() == 0 if "token_type_ids" in batch else True
    assert batch["input_values"][1].abs().sum() == 0 and batch["input_ids"][2].abs().sum() == 0
    with pytest.raises(ValueError, match=r"row 1: `input_values` is empty"):
        AvEmotionCollator()([rows[0], {"input_values": np.zeros(0), "label": 1}])
    with pytest.raises(ValueError, match=r"row 1: `input_ids` is empty"):
        AvEmotionCollator()([rows[0], {"input_ids": [], "label": 1}])
    with pytest.raises(ValueError, match="rows mix `input_values` and `audio_features`"):
        AvEmotionCollator()([rows[0], {"audio_features": np.ones((2, 3)), "label": 1}])


def test_audio_values_are_decoded_and_resampled_to_the_collators_rate(tmp_path):
    from types import SimpleNamespace

    import soundfile

    def tone(rate, seconds=1.0):
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)

    path = tmp_path / "tone.wav"
    soundfile.write(path, tone(8000), 8000, subtype="FLOAT")
    stereo_8k = torch.from_numpy(np.stack([tone(8000), tone(8000)]))
    decoder = SimpleNamespace(get_all_samples=lambda: SimpleNamespace(data=stereo_8k, sample_rate=8000))
    rows = [
        {"audio": {"array": tone(8000), "sampling_rate": 8000}, "label": 0},  # a decoded `datasets` dict at 8 kHz
        {"input_values": {"array": tone(16000), "sampling_rate": 16000}, "label": 1},
        {"audio": decoder, "label": 2},  # a torchcodec AudioDecoder (datasets >= 4)
        {"audio": {"path": str(path), "bytes": None}, "label": 0},  # undecoded, on disk
        {"audio": {"path": "tone.wav", "bytes": path.read_bytes()}, "label": 1},  # undecoded, in the dataset
        {"audio": {"array": tone(16000, 0.25), "sampling_rate": 16000}, "label": 2},
    ]
    batch = AvEmotionCollator()(rows)
    assert batch["input_values"].shape == (6, 16000)
    assert batch["attention_mask"].sum(-1).tolist() == [16000] * 5 + [4000]
    # every 8 kHz value is resampled to 16 kHz: the 16 kHz tone, away from the resampler's edges
    for row in (0, 2, 3, 4):
        np.testing.assert_allclose(batch["input_values"][row, 500:15500], tone(16000)[500:15500], atol=2e-3)
    torch.testing.assert_close(batch["input_values"][1], torch.from_numpy(tone(16000)))
    # another model rate: the 16 kHz values are resampled down
    batch = AvEmotionCollator(sampling_rate=8000)(rows[:2])
    assert batch["attention_mask"].sum(-1).tolist() == [8000, 8000]
    torch.testing.assert_close(batch["input_values"][0], torch.from_numpy(tone(8000)))
    # bare arrays are samples at the collator's rate, as they are (e.g. normalised processor outputs)
    bare = AvEmotionCollator(sampling_rate=8000)([{"input_values": np.full(10, 3.0), "label": 0}])
    assert bare["input_values"].tolist() == [[3.0] * 10]
    with pytest.raises(ValueError, match="row 0: audio: expected a path, a datasets Audio value"):
        AvEmotionCollator()([{"audio": {"array": tone(8000)}, "label": 0}])
