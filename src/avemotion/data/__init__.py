"""Corpus builders, the synthetic corpus, collators and the feature cache.

`load_corpus(name, data_dir, **options)` reads a corpus from the user's copy in its official layout into a
`DatasetDict` (train / validation / test) with one shared row schema (`common.shared_features`): `id`, `audio`
(16 kHz), `video` (path or None), `text`, `label` (`ClassLabel`) and/or `arousal` / `valence` / `dominance`, `speaker`,
`gender`, plus corpus columns. Corpora: `crema_d`, `ravdess`, `msp_improv`, `iemocap`, `synthetic`.
"""

from .cache import cache_features
from .collators import AvEmotionCollator
from .common import CorpusReport, corpus_metadata, shared_features, speaker_folds
from .loading import CORPORA, add_dataset_arguments, load_corpus, load_corpus_from_args
from .synthetic import SyntheticFeatureExtractor, write_synthetic_corpus

__all__ = [
    "CORPORA",
    "AvEmotionCollator",
    "CorpusReport",
    "SyntheticFeatureExtractor",
    "add_dataset_arguments",
    "cache_features",
    "corpus_metadata",
    "load_corpus",
    "load_corpus_from_args",
    "shared_features",
    "speaker_folds",
    "write_synthetic_corpus",
]
