"""Kaggle training kernel (TPU v5e-8 or GPU T4 ×2, internet on): install landmark-kaggle from the wheel, then train.

`train --kaggle` finds everything among the inputs by what it holds: the shard
dataset(s), a backbone weights file if one is attached (else ImageNet weights
are downloaded), and this kernel's previous version's output (attached by
`landmark-kaggle kernels push train --continue`), whose checkpoint it copies in
and resumes, so each version continues where the last one stopped; a fixed
record order (data.deterministic) makes a mid-epoch resume see exactly the
records the stopped session had left. The hardware found decides the rest: on a
TPU VM, JAX over the 8 cores in bfloat16; on "GPU T4 ×2", TensorFlow's
MirroredStrategy over both T4s in float16 with loss scaling and XLA; with no
accelerator it stops at once. 32 images per core (256 on a v5e-8, 64 on T4 ×2),
the learning rate set for 32 and raised by the square-root rule. It stops
cleanly before Kaggle's session limit; /kaggle/working/model is what
`landmark-kaggle kernels bundle --model` packs.
"""

import sys

from prelude import run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("landmark_kaggle.cli", "train", "--kaggle", "--set", "runtime.require_accelerator=true",
             "--set", "data.deterministic=true", "--set", "train.batch_size=32",
             "--set", "train.scale_batch_with_replicas=true", "--set", "optim.learning_rate=7e-4",
             "--set", "model.weights=imagenet", "--set", "session.time_budget=8h30m"))
