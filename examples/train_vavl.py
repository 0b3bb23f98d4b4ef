"""Train VAVL with accelerate: per batch a visual, an acoustic and a fusion step (reference/vavl.md §4.2).

One process:       python examples/train_vavl.py --dataset DIR --output_dir OUT
Several processes: accelerate launch --multi_gpu --num_processes 2 examples/train_vavl.py --dataset DIR ...
CPU processes:     ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
                       --mixed_precision no --dynamo_backend no examples/train_vavl.py --dataset DIR ...

DIR is a DatasetDict saved with `save_to_disk` whose rows hold `audio_features` / `visual_features` arrays (None for a
missing modality) and `label`; options are those of `avemotion train --help`.
"""

import sys

from avemotion.training.cli_train import main

if __name__ == "__main__":
    main(sys.argv[1:], model_type="vavl", schedule="auto")
