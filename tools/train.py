#!/usr/bin/env python
"""Train (or evaluate) a detectron2 config on any number of GPUs, rescaled for that number.

The same as ``det-scaling train``, with detectron2's ``train_net.py`` arguments::

    python tools/train.py --config-file configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml \\
        --num-gpus 8 OUTPUT_DIR output/voc07_8gpu
    python tools/train.py --config-file CFG --num-gpus 4 --resume    # also from another count
    python tools/train.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train.py --config-file CFG --num-gpus 8 --num-machines 2 --machine-rank R \\
        --dist-url tcp://HOST0:PORT
    torchrun --nproc-per-node 8 tools/train.py --config-file CFG

The work is in :mod:`det_scaling.commands.train`.
"""

import sys

from det_scaling.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
