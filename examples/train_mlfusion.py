"""Train the multi-level wav2vec 2.0 + BERT fusion model jointly (sum of its per-head losses) with accelerate.

One process:       python examples/train_mlfusion.py --dataset DIR --config CONFIG_JSON --output_dir OUT
Several processes: accelerate launch --multi_gpu --num_processes 2 examples/train_mlfusion.py ...

Options are those of `avemotion train --help`. The dataset rows must hold the model's inputs (see
`MultiLevelFusionForEmotionRecognition.forward`), collated by the collator the data package provides for them.
"""

import sys

from avemotion.training.cli_train import main

if __name__ == "__main__":
    main(sys.argv[1:], model_type="mlfusion", schedule="joint")
