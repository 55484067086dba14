"""The toolkit's config keys, added to detectron2's CfgNode in one place, a function a section.

Every key det_scaling reads is added by :func:`add_scaling_config`, with its default and meaning
documented beside it. detectron2's own keys keep their meaning; in particular the reference setup
a config is written for is detectron2's ``SOLVER.REFERENCE_WORLD_SIZE`` together with
``SOLVER.IMS_PER_BATCH``: 0 means "written for the GPUs you use", and nothing is rescaled.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.config import get_cfg as _detectron2_get_cfg

__all__ = ["add_scaling_config", "get_cfg"]


def add_scaling_config(cfg: CfgNode) -> None:
    """Adds det_scaling's keys, with their defaults, to ``cfg`` (in place, like detectron2's
    ``add_*_config`` helpers). Calling it twice is harmless."""
    if "SCALING" in cfg:
        return
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    add_scaling_keys(cfg)
    add_synthetic_voc_keys(cfg)
    add_solver_keys(cfg)
    add_classification_keys(cfg)
    add_reproducibility_keys(cfg)
    add_weights_keys(cfg)
    if was_frozen:
        cfg.freeze()


def add_scaling_keys(cfg: CfgNode) -> None:
    """``SCALING.*``: how a config written for REFERENCE_WORLD_SIZE GPUs moves to another count."""
    cfg.SCALING = CfgNode()
    # How BASE_LR and BASE_LR_END follow the total batch: "linear" (Goyal et al. 2017; what
    # detectron2's auto_scale_workers does), "sqrt" (Krizhevsky 2014; for adaptive optimizers),
    # "none" (LR kept), "auto" (sqrt for an Adam-like SOLVER.OPTIMIZER, linear otherwise; see
    # SCALING.ADAM_SDE), or "adascale" (SCALING.ADASCALE_REFERENCE_BATCH).
    cfg.SCALING.RULE = "linear"
    # How the schedule (MAX_ITER, STEPS, warmup, periods) follows the total batch: "images" keeps
    # the number of images seen (as auto_scale_workers does); "noise" multiplies the run's length,
    # STEPS and the periods by the epochs factor (1 + B / B_crit) / (1 + B_ref / B_crit) of the new
    # total batch B against the written one B_ref (McCandlish et al. 2018), B_crit being
    # SCALING.NOISE_SCALE.B_CRIT; the warmup keeps its images. Under "adascale" the run measures
    # its own length: "images" only.
    cfg.SCALING.SCHEDULE = "images"
    # With fewer GPUs than the reference: keep the reference total batch (and so its LR and
    # schedule) by accumulating gradients over REFERENCE_WORLD_SIZE / num_gpus micro-batches.
    cfg.SCALING.KEEP_REFERENCE_BATCH = False
    # Micro-batches whose gradients are summed into one optimizer step. SOLVER.IMS_PER_BATCH is the
    # total per optimizer step, so each GPU loads IMS_PER_BATCH / (world size * this) images a
    # micro-batch. scale_cfg sets it when KEEP_REFERENCE_BATCH applies.
    cfg.SCALING.GRAD_ACCUM_STEPS = 1
    # Images in one epoch of the training set, for epoch figures in plans and plots and for
    # configs written in epochs. 0: unknown (trainers fill it in from the registered data set).
    cfg.SCALING.DATASET_SIZE = 0
    # A schedule written in epochs (as classification configs usually are). When EPOCHS.MAX > 0,
    # SOLVER.MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and TEST.EVAL_PERIOD are computed
    # from these at the run's total batch (epochs x DATASET_SIZE / IMS_PER_BATCH, rounded), and the
    # iteration values written in the config are ignored.
    cfg.SCALING.EPOCHS = CfgNode()
    cfg.SCALING.EPOCHS.MAX = 0.0  # 0: the schedule is written in iterations
    cfg.SCALING.EPOCHS.STEPS = ()  # the epochs of SOLVER.STEPS
    cfg.SCALING.EPOCHS.WARMUP = 0.0  # the epochs of SOLVER.WARMUP_ITERS
    cfg.SCALING.EPOCHS.CHECKPOINT_PERIOD = 0.0  # 0: a checkpoint at the end only
    cfg.SCALING.EPOCHS.EVAL_PERIOD = 0.0  # 0: no periodic evaluation

    # ---- AdaBatch: grow the total batch at fixed epochs, with its own LR factor ----
    # (Devarakonda et al. 2017; the stages: det_scaling/scaling/batch_schedule.py.) Every
    # INTERVAL_EPOCHS the total batch is multiplied by BATCH_FACTOR and the LR by LR_FACTOR: the
    # paper's defaults below take 100 epochs from batch 128 to 2048 (5 stages), LR x0.75 at each
    # doubling. The batch grows by gradient accumulation (SCALING.GRAD_ACCUM_STEPS x BATCH_FACTOR
    # per stage): each GPU's micro-batch, hence its memory, stays the same. The starting batch,
    # accumulation and LR are the config's after scale_cfg (with N GPUs, the scaled ones), so the
    # stages fall at the same epochs at any GPU count. The run covers the images of the config's
    # schedule (SOLVER.MAX_ITER x IMS_PER_BATCH) in fewer optimizer steps; the LR schedule
    # (warmup, STEPS, decay), the LR factor of each stage on top of it, SOLVER.CHECKPOINT_PERIOD
    # and TEST.EVAL_PERIOD all keep their places in images seen. Needs SCALING.DATASET_SIZE
    # (trainers fill it in).
    cfg.SCALING.ADABATCH = CfgNode()
    cfg.SCALING.ADABATCH.ENABLED = False
    cfg.SCALING.ADABATCH.INTERVAL_EPOCHS = 20.0  # epochs between two growths
    cfg.SCALING.ADABATCH.BATCH_FACTOR = 2  # integer >= 1 (1: a step LR decay, batch fixed)
    cfg.SCALING.ADABATCH.LR_FACTOR = 0.75  # > 0; the paper: 0.75 on 1 GPU, 0.25 on several
    # The most stages, the first included (0: one every INTERVAL_EPOCHS to the end of the run);
    # the last stage then lasts to the end with its batch and LR factor.
    cfg.SCALING.ADABATCH.MAX_STAGES = 0

    # ---- gradient noise scale: how many epochs a batch needs (engine/gradient_noise.py) ----
    # B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), in images, estimates the critical
    # batch B_crit: a batch B needs (1 + B / B_crit) / (1 + B_ref / B_crit) times the epochs of a
    # batch B_ref for the same progress (SCALING.SCHEDULE "noise" trains them). Measured from the
    # gradient norms at the two batch sizes each step has (one process's before DDP's all-reduce
    # and the all-reduced one; on one process, the first micro-batch and the accumulated step), so
    # it needs 2+ processes or SCALING.GRAD_ACCUM_STEPS >= 2.
    cfg.SCALING.NOISE_SCALE = CfgNode()
    cfg.SCALING.NOISE_SCALE.ENABLED = False  # measure it in training; logged as noise_scale
    # Weight kept per step by the running averages of |G|^2 and tr(Sigma) (0.99: about 100 steps).
    cfg.SCALING.NOISE_SCALE.DECAY = 0.99
    cfg.SCALING.NOISE_SCALE.PERIOD = 20  # steps between two logged readings (one host sync each)
    # The critical batch in images (0: unknown), for SCALING.SCHEDULE "noise": B_simple measured
    # late in training (det-scaling advise or noise-scale), or fitted to runs (fit_critical_batch).
    cfg.SCALING.NOISE_SCALE.B_CRIT = 0.0

    # ---- the rules' other settings, and out-of-memory errors ----
    # With an Adam-like optimizer and the "sqrt" or "auto" rule, also apply Malladi et al. 2022's
    # square-root rule to Adam's betas and eps when the batch changes by kappa:
    # beta -> 1 - kappa (1 - beta), eps -> eps / sqrt(kappa) (SOLVER.ADAMW.BETAS / EPS).
    cfg.SCALING.ADAM_SDE = False
    # On a CUDA out-of-memory error in the forward or backward pass, all processes agree to halve
    # the micro-batch per process and double the accumulation (total batch, LR, schedule kept);
    # stops with an error at 1 image. One small all-reduce per micro-batch while it is on.
    cfg.SCALING.AUTO_MICRO_BATCH = False
    # SCALING.RULE "adascale" (Johnson et al. 2020): BASE_LR, MAX_ITER, STEPS and WARMUP_ITERS
    # stay those of this total batch (0: SOLVER.IMS_PER_BATCH as written; scaling sets it). A run
    # at S times this batch multiplies the LR by the gain ratio r in [1, S] measured each step
    # (SCALING.NOISE_SCALE.DECAY smooths it), advances the schedule by r steps per step, and ends
    # when it reaches MAX_ITER: between MAX_ITER / S and MAX_ITER steps.
    cfg.SCALING.ADASCALE_REFERENCE_BATCH = 0


def add_synthetic_voc_keys(cfg: CfgNode) -> None:
    """``DATASETS.SYNTHETIC_VOC.*``: the generated VOC-layout set that stands in for VOC07."""
    # Data sets named synthetic_voc_trainval / synthetic_voc_test are generated (once,
    # deterministically) with these parameters, in their own folder
    # $DETECTRON2_DATASETS/synthetic_voc/<key> (datasets/README.md), never rewritten once complete,
    # then read by detectron2's VOC loader and evaluated by its VOC07 evaluator like the real
    # VOC2007.
    cfg.DATASETS.SYNTHETIC_VOC = CfgNode()
    cfg.DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL = 500  # images of synthetic_voc_trainval
    cfg.DATASETS.SYNTHETIC_VOC.NUM_TEST = 100  # images of synthetic_voc_test
    cfg.DATASETS.SYNTHETIC_VOC.IMAGE_SIZE = 128  # pixels, square
    cfg.DATASETS.SYNTHETIC_VOC.SEED = 0  # the same parameters and seed make the same images
    cfg.DATASETS.SYNTHETIC_VOC.OBJECTS_PER_IMAGE = (3, 6)  # inclusive range
    # Object side as a fraction of the image side.
    cfg.DATASETS.SYNTHETIC_VOC.OBJECT_SIZE = (0.15, 0.4)


def add_solver_keys(cfg: CfgNode) -> None:
    """``SOLVER.*``: optimizers and schedules by name, upstream's newer keys, checkpoints kept."""
    # Upstream detectron2 added the next three keys after v0.6; each is added here, with
    # upstream's default and meaning, only when the installed detectron2 lacks it, so configs
    # written for upstream load and train the same under v0.6.

    # The LR that cosine and poly decay towards.
    if "BASE_LR_END" not in cfg.SOLVER:
        cfg.SOLVER.BASE_LR_END = 0.0
    # WarmupStepWithFixedGammaLR: the LR is multiplied by GAMMA NUM_DECAYS times, at equal
    # intervals of the run.
    if "NUM_DECAYS" not in cfg.SOLVER:
        cfg.SOLVER.NUM_DECAYS = 3
    # False: after warmup the schedule continues where it is at WARMUP_ITERS (warmup joins it
    # there). True: the whole schedule runs after warmup, over MAX_ITER - WARMUP_ITERS
    # iterations (warmup joins its start). For every schedule and WARMUP_METHOD.
    if "RESCALE_INTERVAL" not in cfg.SOLVER:
        cfg.SOLVER.RESCALE_INTERVAL = False
    # OPTIMIZER_REGISTRY name: "SGD" (detectron2's), "LARS", "LARC" (LARS with apex's clipping),
    # "AdamW".
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.LARS = CfgNode()
    # Trust coefficient (eta in the LARS paper, which uses 0.001; apex LARC's default is 0.02).
    cfg.SOLVER.LARS.TRUST_COEFFICIENT = 0.02
    cfg.SOLVER.LARS.EPS = 1e-8  # added to the trust ratio's denominator
    # Biases and normalization parameters keep trust 1 and get no weight decay, as in the
    # large-batch literature.
    cfg.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM = True
    cfg.SOLVER.ADAMW = CfgNode()
    cfg.SOLVER.ADAMW.BETAS = (0.9, 0.999)  # AdamW's betas (SOLVER.OPTIMIZER "AdamW")
    cfg.SOLVER.ADAMW.EPS = 1e-8  # AdamW's eps
    # Schedules are functions of training progress (iteration / MAX_ITER), so their shape does not
    # change when scale_cfg changes MAX_ITER. SOLVER.WARMUP_METHOD also accepts "exponential".

    # WarmupPolyLR: BASE_LR_END + (BASE_LR - BASE_LR_END) * (1 - progress) ** POWER.
    cfg.SOLVER.POLY_LR_POWER = 2.0
    # WarmupExponentialLR: the LR factor reached at MAX_ITER: BASE_LR * DECAY ** progress.
    cfg.SOLVER.EXPONENTIAL_LR_DECAY = 0.01
    # WarmupInverseTimeLR: BASE_LR / (1 + K * progress); K = 9 ends at a tenth of BASE_LR.
    cfg.SOLVER.INVERSE_TIME_LR_K = 9.0
    # Reduce the LR when a validation metric stops improving (SOLVER.PLATEAU.ENABLED), applied on
    # top of the scheduler's value after warmup; evaluated each time TEST.EVAL_PERIOD runs.
    cfg.SOLVER.PLATEAU = CfgNode()
    cfg.SOLVER.PLATEAU.ENABLED = False
    cfg.SOLVER.PLATEAU.METRIC = "bbox/AP50"  # a key of the evaluation results, e.g. top1
    cfg.SOLVER.PLATEAU.MODE = "max"  # "max" or "min": whether a larger METRIC is better
    cfg.SOLVER.PLATEAU.FACTOR = 0.1  # the LR is multiplied by this at each reduction
    cfg.SOLVER.PLATEAU.PATIENCE = 2  # evaluations without improvement before a reduction
    cfg.SOLVER.PLATEAU.COOLDOWN = 0  # evaluations to wait after a reduction
    # An improvement is a change of more than THRESHOLD x |best| ("rel") or THRESHOLD ("abs").
    cfg.SOLVER.PLATEAU.THRESHOLD = 1e-4
    cfg.SOLVER.PLATEAU.THRESHOLD_MODE = "rel"  # "rel" or "abs"
    cfg.SOLVER.PLATEAU.MIN_LR = 0.0  # a reduction does not take the LR below this

    # ---- reliability: checkpoints that a crash cannot make unresumable (engine/checkpoint) ----
    # Periodic checkpoints kept in OUTPUT_DIR, the oldest deleted first; 0 keeps all (detectron2's
    # behaviour). Otherwise at least 2, so that resume has an older one when the newest cannot be
    # read; model_final.pth is never deleted.
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0


def add_classification_keys(cfg: CfgNode) -> None:
    """``MODEL.CLASSIFIER.*``, ``INPUT.CLS_*``, ``TEST.CLS_IMS_PER_PROCESS``: the classification
    baseline."""
    # Read by the "ImageClassifier" meta-architecture, the folder loaders and their mapper; the
    # solver, schedule and scaling keys above apply unchanged. INPUT.FORMAT, INPUT.RANDOM_FLIP
    # ("horizontal", "vertical" or "none"), MODEL.PIXEL_MEAN / PIXEL_STD (0-255 scale, normalised
    # in the model), SOLVER.AMP.ENABLED (mixed precision, CUDA only) and DATALOADER.* keep
    # detectron2's meaning.
    cfg.MODEL.CLASSIFIER = CfgNode()
    # torchvision ResNet depth: 18, 34, 50, 101 or 152 (randomly initialised: weights=None).
    cfg.MODEL.CLASSIFIER.DEPTH = 50
    # Output classes; must cover the labels of DATASETS.TRAIN (checked when the model is built).
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    # Label smoothing of the cross-entropy loss (0: none; 0.1 is the usual value).
    cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.0
    # Start each residual block as an identity: the last BN of each block has gamma 0 (Goyal et
    # al. 2017, section 5.1; torchvision's zero_init_residual).
    cfg.MODEL.CLASSIFIER.ZERO_INIT_RESIDUAL = True
    # For inputs of about 32 pixels: a 3x3 stride-1 first convolution and no max-pool (the CIFAR
    # ResNets of He et al.), so the last stage sees 4x4 instead of 1x1. It costs 16x the compute
    # of the ImageNet stem at the same input size.
    cfg.MODEL.CLASSIFIER.SMALL_INPUT_STEM = False
    # Training crop: a random area in CLS_CROP_SCALE of the image and aspect ratio in
    # CLS_CROP_RATIO, resized to CLS_TRAIN_SIZE square (torchvision's RandomResizedCrop).
    cfg.INPUT.CLS_TRAIN_SIZE = 224
    cfg.INPUT.CLS_CROP_SCALE = (0.08, 1.0)  # fractions of the image's area
    cfg.INPUT.CLS_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # width / height
    # Evaluation: shorter side resized to CLS_TEST_RESIZE, then a CLS_TEST_SIZE square center crop.
    cfg.INPUT.CLS_TEST_RESIZE = 256
    cfg.INPUT.CLS_TEST_SIZE = 224  # pixels, square
    # Images per process in an evaluation batch (detectron2 v0.6's test loader has 1 image per
    # batch, which is slow for classification; the result does not depend on it).
    cfg.TEST.CLS_IMS_PER_PROCESS = 32

    # The classifier's network: "torchvision" (torchvision's ResNet, MODEL.CLASSIFIER.DEPTH) or
    # "detectron2" (detectron2's ResNet from MODEL.RESNETS, e.g. with GroupNorm, plus a linear
    # layer), whose backbone weights load into a detectron2 detector of the same MODEL.RESNETS
    # (det_scaling.commands.pretrain.export_backbone): ImageNet pretraining for a detector.
    cfg.MODEL.CLASSIFIER.BACKBONE = "torchvision"


def add_reproducibility_keys(cfg: CfgNode) -> None:
    """``DETERMINISTIC``: beside detectron2's ``SEED`` and ``CUDNN_BENCHMARK``."""
    # Deterministic kernels in every process (torch.use_deterministic_algorithms, cuDNN without
    # its autotuner, cuBLAS with a fixed workspace), so that a run on a GPU repeats bit for bit;
    # slower. Excludes CUDNN_BENCHMARK. On the CPU a fixed SEED with one thread per process
    # already repeats.
    cfg.DETERMINISTIC = False


def add_weights_keys(cfg: CfgNode) -> None:
    """``MODEL.ALLOW_PICKLED_WEIGHTS``: beside detectron2's ``MODEL.WEIGHTS``."""
    # Read MODEL.WEIGHTS that is a .pkl file from anywhere. Reading a .pkl file (the format of
    # Detectron's and detectron2's model zoos) can run code in it, so by default only those in
    # detectron2's model-zoo download cache are read, where detectron2:// URLs are saved; any other
    # is refused. .pth and .pyth files are read with torch.load(weights_only=True) either way.
    # det-scaling train --allow-pickled-weights sets it.
    cfg.MODEL.ALLOW_PICKLED_WEIGHTS = False


def get_cfg() -> CfgNode:
    """detectron2's default config with det_scaling's keys added."""
    cfg = _detectron2_get_cfg()
    add_scaling_config(cfg)
    return cfg
