"""Fine-tune a pretrained AAM model on sample metadata with DeepSpeed.

    deepspeed --num_gpus 2 launch/finetune.py --spec finetune.yaml \
        --set model.pretrained=runs/pretrain/model.pt --set loss.task=regression --set data.targets=[age]
    python launch/finetune.py --spec finetune.yaml      # one process

Add --resume to continue from the checkpoint folder's ``latest``.
"""

from aam_ds.engine.entry import run_stage
from aam_ds.engine.trainer import finetune

if __name__ == "__main__":
    run_stage(finetune, description=__doc__)
