r"""Fine-tune a pretrained AAM model on sample metadata with DeepSpeed.

    deepspeed --num_gpus 2 launch/finetune.py --spec finetune.yaml \
        --set model.pretrained=runs/pretrain-latest/model.pt --set loss.task=regression --set data.targets=[age]
    python launch/finetune.py --spec finetune.yaml      # one process

Outputs go to a new runs/finetune-<time>/ (linked as runs/finetune-latest) unless tracking.run_dir
is set. Add --resume to continue from the checkpoint folder's ``latest``.
"""

from aam_ds.engine.entry import run_stage
from aam_ds.engine.trainer import finetune

if __name__ == "__main__":
    run_stage(finetune, description=__doc__)
