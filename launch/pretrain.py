"""Pretrain an AAM model with DeepSpeed.

    deepspeed --num_gpus 2 launch/pretrain.py --spec run.yaml --ds-config ds_configs/zero2.json
    torchrun --nproc_per_node 2 launch/pretrain.py --spec run.yaml
    python launch/pretrain.py --spec run.yaml --set schedule.steps=50      # one process
    deepspeed --hostfile hostfile launch/pretrain.py --spec run.yaml         # several nodes

Outputs go to a new runs/pretrain-<time>/ (linked as runs/pretrain-latest) unless tracking.run_dir
is set. Add --resume to continue from the checkpoint folder's ``latest``.
"""

from aam_ds.engine.entry import run_stage
from aam_ds.engine.trainer import pretrain

if __name__ == "__main__":
    run_stage(pretrain, description=__doc__)
