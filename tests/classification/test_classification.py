"""Classification on the shared engine: the digits export, the folder loaders, scaling of the
classification configs by the same ``scale_cfg``, the accuracy evaluator, the model, and a
2-process CPU run through ``det_scaling.engine.launch`` with ``ClassificationTrainer``.

Everything is real: the digits are written as PNG files and read back through detectron2's
``DatasetCatalog`` and loaders; the multi-process run is two gloo processes. Models are kept tiny
(ResNet-18 at 32x32, a few iterations) so the suite stays fast on a small CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from PIL import Image

import det_scaling  # compatibility layer first
from det_scaling.classification import (
    ClassificationEvaluator,
    ClassificationTrainer,
    build_classification_test_loader,
    build_classification_train_loader,
    check_num_classes,
    digits_dir,
    export_digits,
    load_image_folder,
    register_digits,
    register_image_folder,
    topk_correct,
)
from det_scaling.classification.digits import read_manifest
from det_scaling.engine.launch import launch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "ImageNet-Classification"
GOYAL = CONFIGS / "resnet50_goyal.yaml"
DIGITS = CONFIGS / "resnet50_digits.yaml"
NUM_DIGITS, NUM_TRAIN, NUM_VAL = 1797, 1438, 359


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    """A data sets root holding the digits export (made once for the module)."""
    root = tmp_path_factory.mktemp("datasets")
    export_digits(root / "digits")
    return root


def tiny_cfg(output_dir: Path, **overrides):
    """The digits config, shrunk: ResNet-18, 4 images per process, an iteration schedule."""
    cfg = det_scaling.load_cfg(str(DIGITS))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLASSIFIER.DEPTH = 18
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SCALING.EPOCHS.MAX = 0.0  # iterations as written below
    cfg.SCALING.DATASET_SIZE = NUM_TRAIN
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.STEPS = (3,)
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 3
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = cfg[node]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return cfg


# ---- the digits export ----
def test_export_digits_writes_stratified_class_folders_of_png(datasets_dir):
    root = digits_dir(datasets_dir / "digits")
    assert root.name.startswith("32px-val0.2-seed0-")
    manifest = read_manifest(root)
    assert manifest["counts"] == {"train": NUM_TRAIN, "val": NUM_VAL}
    for split, count in manifest["counts"].items():
        classes = sorted(p.name for p in (root / split).iterdir())
        assert classes == [str(digit) for digit in range(10)]
        files = sorted((root / split).glob("*/*.png"))
        assert len(files) == count
    # Every image once, in one split only; sklearn's index is the file name.
    names = [p.name for p in root.glob("*/*/*.png")]
    assert sorted(names) == [f"{index:04d}.png" for index in range(NUM_DIGITS)]
    # Stratified: each class gives about a fifth of its images to val.
    for digit in range(10):
        train = len(list((root / "train" / str(digit)).glob("*.png")))
        val = len(list((root / "val" / str(digit)).glob("*.png")))
        assert val == round((train + val) * 0.2)
    with Image.open(root / "train" / "0" / "0000.png") as image:
        assert image.size == (32, 32)
        assert image.mode == "L"


def test_export_digits_is_deterministic(datasets_dir, tmp_path):
    again = export_digits(tmp_path / "digits")
    exported = digits_dir(datasets_dir / "digits")
    assert again == digits_dir(tmp_path / "digits") and again.name == exported.name
    first = sorted(p.relative_to(exported) for p in exported.rglob("*"))
    assert sorted(p.relative_to(again) for p in again.rglob("*")) == first
    for relative in first:
        a, b = exported / relative, again / relative
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), relative


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_export_digits_reuses_a_complete_export_and_writes_another_apart(tmp_path):
    root = export_digits(tmp_path / "digits", upscale=8)
    stamps = _stamps(root)
    assert export_digits(tmp_path / "digits", upscale=8) == root
    assert _stamps(root) == stamps  # nothing rewritten
    other = export_digits(tmp_path / "digits", upscale=16)
    assert other.parent == root.parent and other != root
    assert _stamps(root) == stamps  # the first export, as it was
    assert read_manifest(other)["upscale"] == 16 and read_manifest(other)["complete"]
    with Image.open(next(other.glob("val/*/*.png"))) as image:
        assert image.size == (16, 16)
    assert len(list(other.glob("*/*/*.png"))) == NUM_DIGITS


def test_export_digits_refuses_folders_it_did_not_make(tmp_path):
    (digits_dir(tmp_path / "mine") / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"digits\.json"):
        export_digits(tmp_path / "mine")


# ---- the folder loader ----
def test_register_digits_puts_both_splits_in_the_catalog(datasets_dir):
    train_name, val_name = register_digits(datasets_dir)
    train, val = DatasetCatalog.get(train_name), DatasetCatalog.get(val_name)
    assert (len(train), len(val)) == (NUM_TRAIN, NUM_VAL)
    for record in train[:50] + val[:50]:
        path = Path(record["file_name"])
        assert path.is_absolute() and path.is_file()
        assert record["label"] == int(path.parent.name)
        assert record["image_id"] == f"{path.parent.name}/{path.stem}"
    meta = MetadataCatalog.get(val_name)
    assert meta.thing_classes == [str(digit) for digit in range(10)]
    assert meta.evaluator_type == "classification"
    assert meta.split_dir == str(digits_dir(datasets_dir / "digits") / "val")
    register_digits(datasets_dir)  # registering again is harmless
    assert len(DatasetCatalog.get(train_name)) == NUM_TRAIN


def _write_folder(split_dir: Path, classes: dict[str, int], suffix: str) -> None:
    for label, (name, count) in enumerate(classes.items()):
        (split_dir / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.full((20, 28, 3), 40 * label + index, dtype=np.uint8)
            Image.fromarray(pixels).save(split_dir / name / f"img{index}{suffix}")


def test_image_folder_reads_jpeg_and_png_with_the_training_classes(tmp_path):
    _write_folder(tmp_path / "train", {"cat": 2, "dog": 3}, ".JPEG")
    _write_folder(tmp_path / "val", {"dog": 1}, ".png")  # a class missing from val
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    train = load_image_folder(tmp_path / "train")
    assert [(Path(r["file_name"]).name, r["label"]) for r in train] == [
        ("img0.JPEG", 0),
        ("img1.JPEG", 0),
        ("img0.JPEG", 1),
        ("img1.JPEG", 1),
        ("img2.JPEG", 1),
    ]
    # val keeps train's label of "dog" although it is val's only folder.
    assert [r["label"] for r in load_image_folder(tmp_path / "val", ["cat", "dog"])] == [1]
    with pytest.raises(ValueError, match="not among"):
        load_image_folder(tmp_path / "train", ["dog"])

    register_image_folder("test_cls_pets_val", tmp_path / "val", ["cat", "dog"])
    cfg = tiny_cfg(tmp_path, **{"INPUT.CLS_TEST_RESIZE": 16, "INPUT.CLS_TEST_SIZE": 16})
    (batch,) = list(build_classification_test_loader(cfg, "test_cls_pets_val"))
    assert batch[0]["image"].shape == (3, 16, 16) and batch[0]["image"].dtype == torch.uint8
    assert batch[0]["label"] == 1


def test_train_loader_gives_per_process_batches_of_same_size_crops(datasets_dir, tmp_path):
    register_digits(datasets_dir)
    cfg = tiny_cfg(tmp_path, **{"SOLVER.IMS_PER_BATCH": 6})
    batch = next(iter(build_classification_train_loader(cfg)))
    assert len(batch) == 6  # one process: the whole IMS_PER_BATCH
    assert {tuple(x["image"].shape) for x in batch} == {(3, 32, 32)}
    assert all(0 <= x["label"] < 10 for x in batch)


def test_test_loader_reads_every_image_once_in_batches(datasets_dir, tmp_path):
    _, val_name = register_digits(datasets_dir)
    cfg = tiny_cfg(tmp_path, **{"TEST.CLS_IMS_PER_PROCESS": 100})
    batches = list(build_classification_test_loader(cfg, val_name))
    assert [len(b) for b in batches] == [100, 100, 100, 59]
    ids = [x["image_id"] for b in batches for x in b]
    assert sorted(ids) == sorted(r["image_id"] for r in DatasetCatalog.get(val_name))


# ---- scaling of the classification configs: the same scale_cfg as detection ----
@pytest.mark.parametrize(
    ("num_gpus", "batch", "lr"), [(1, 32, 0.0125), (8, 256, 0.1), (32, 1024, 0.4)]
)
def test_goyal_config_scales_by_the_linear_rule_with_epochs_as_iterations(num_gpus, batch, lr):
    cfg = det_scaling.scale_cfg(det_scaling.load_cfg(str(GOYAL)), num_gpus)
    size = 1281167
    assert cfg.SOLVER.IMS_PER_BATCH == batch
    assert cfg.SOLVER.BASE_LR == pytest.approx(lr)
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == num_gpus
    assert cfg.SOLVER.MAX_ITER == round(90 * size / batch)
    assert cfg.SOLVER.STEPS == tuple(round(epoch * size / batch) for epoch in (30, 60, 80))
    assert cfg.SOLVER.WARMUP_ITERS == round(5 * size / batch)
    assert cfg.SOLVER.CHECKPOINT_PERIOD == cfg.TEST.EVAL_PERIOD == round(5 * size / batch)


def test_goyal_config_on_one_gpu_can_keep_the_reference_batch_by_accumulation():
    cfg = det_scaling.scale_cfg(det_scaling.load_cfg(str(GOYAL)), 1, keep_reference_batch=True)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SCALING.GRAD_ACCUM_STEPS) == (256, 8)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.1)
    assert cfg.SOLVER.MAX_ITER == round(90 * 1281167 / 256)


def test_digits_config_keeps_its_epochs_at_any_process_count():
    cfg = det_scaling.load_cfg(str(DIGITS))
    cfg.SCALING.DATASET_SIZE = NUM_TRAIN  # what the trainer's setup fills in from the catalog
    reference = cfg.SOLVER.BASE_LR / cfg.SOLVER.IMS_PER_BATCH
    for num_gpus in (1, 2, 4):
        scaled = det_scaling.scale_cfg(cfg, num_gpus)
        assert scaled.SOLVER.IMS_PER_BATCH == 32 * num_gpus
        assert scaled.SOLVER.BASE_LR / scaled.SOLVER.IMS_PER_BATCH == pytest.approx(reference)
        images = scaled.SOLVER.MAX_ITER * scaled.SOLVER.IMS_PER_BATCH
        assert images == pytest.approx(cfg.SCALING.EPOCHS.MAX * NUM_TRAIN, rel=0.01)


# ---- the evaluator and the model ----
def test_topk_correct_counts_labels_among_the_highest_scores():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]


def test_evaluator_reports_top1_and_top5_percentages():
    evaluator = ClassificationEvaluator("known_logits")
    # Ten classes; the label's rank among the scores is 0, 0, 3, 7 for the four images.
    ranks = [0, 0, 3, 7]
    inputs, outputs = [], []
    for label, rank in enumerate(ranks):
        order = [label] + [c for c in range(10) if c != label]
        order.insert(rank, order.pop(0))  # the label at position `rank` of the ranking
        scores = torch.empty(10)
        scores[torch.tensor(order)] = torch.arange(10, 0, -1, dtype=torch.float)
        inputs.append({"label": label})
        outputs.append({"logits": scores})
    evaluator.reset()
    evaluator.process(inputs[:2], outputs[:2])
    evaluator.process(inputs[2:], outputs[2:])
    assert evaluator.evaluate() == {"classification": {"top1": 50.0, "top5": 75.0}}


def test_model_returns_the_smoothed_loss_in_training_and_logits_in_evaluation(tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = [
        {"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8), "label": i} for i in (3, 7)
    ]
    losses = model(images)
    assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])
    losses["loss_cls"].backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert [o["logits"].shape for o in outputs] == [(10,), (10,)]
    # Label smoothing changes the loss of the same logits.
    model.train()
    plain = model(images)["loss_cls"]
    model.label_smoothing = 0.1
    assert not torch.isclose(model(images)["loss_cls"], plain)

    small = build_model(tiny_cfg(tmp_path, **{"MODEL.CLASSIFIER.SMALL_INPUT_STEM": True}))
    assert small.net.conv1.stride == (1, 1) and isinstance(small.net.maxpool, torch.nn.Identity)


def test_too_few_outputs_for_the_training_classes_is_refused(datasets_dir, tmp_path):
    register_digits(datasets_dir)
    with pytest.raises(ValueError, match=r"MODEL\.CLASSIFIER\.NUM_CLASSES 10"):
        check_num_classes(tiny_cfg(tmp_path, **{"MODEL.CLASSIFIER.NUM_CLASSES": 5}))


# ---- a 2-process run, then a resume on 1 process ----
def _train(cfg, datasets_dir: str, resume: bool) -> dict:
    """What a tool's main does in each process: data, scaling, seeds, the trainer."""
    torch.set_num_threads(1)
    register_digits(datasets_dir)
    cfg = det_scaling.scale_cfg(cfg, comm.get_world_size())
    seed_all_rng(cfg.SEED + comm.get_rank())
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()


def _two_process_worker(cfg, datasets_dir: str) -> None:
    _train(cfg, datasets_dir, resume=False)


def validation_accuracy(cfg, weights: Path, datasets_dir: Path) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of ``weights`` on all of digits_val, counted here from the
    model's logits in one process and thread (not by ClassificationEvaluator)."""
    register_digits(datasets_dir)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    top1 = top5 = count = 0
    try:
        with torch.no_grad():
            for batch in build_classification_test_loader(cfg, "digits_val"):
                logits = torch.stack([output["logits"] for output in model(batch)])
                labels = torch.tensor([example["label"] for example in batch])
                ranked = logits.argsort(dim=1, descending=True)
                top1 += int((ranked[:, 0] == labels).sum())
                top5 += int((ranked[:, :5] == labels[:, None]).any(dim=1).sum())
                count += len(batch)
    finally:
        torch.set_num_threads(threads)
    assert count == NUM_VAL
    return 100.0 * top1 / count, 100.0 * top5 / count


@pytest.mark.slow
def test_two_process_cpu_run_trains_evaluates_and_resumes_on_one_process(datasets_dir, tmp_path):
    two = tmp_path / "two"
    launch(_two_process_worker, 2, dist_url="auto", args=(tiny_cfg(two), str(datasets_dir)))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (summary["ims_per_batch"], summary["micro_batch_per_process"]) == (8, 4)
    assert summary["iterations_done"] == 4 and summary["images_seen"] == 32
    # The reported accuracy is the final weights' on the whole validation set, both processes'
    # halves: counted again here from model_final.pth's logits, it is the same figure.
    top1, top5 = validation_accuracy(tiny_cfg(two), two / "model_final.pth", datasets_dir)
    assert summary["metrics"]["classification/top1"] == pytest.approx(top1, rel=1e-12)
    assert summary["metrics"]["classification/top5"] == pytest.approx(top5, rel=1e-12)
    state = torch.load(two / "model_0000001.pth", weights_only=False)
    assert state["trainer"]["hooks"]["ScalingProgress"]["world_size"] == 2

    # Resume the 2-process checkpoint after 2 steps (16 images) on 1 process: batch 4, step 4.
    one = tmp_path / "one"
    one.mkdir()
    (one / "model_0000001.pth").write_bytes((two / "model_0000001.pth").read_bytes())
    (one / "last_checkpoint").write_text("model_0000001.pth")
    resumed = _train(tiny_cfg(one), str(datasets_dir), resume=True)
    assert resumed["world_size"] == 1 and resumed["ims_per_batch"] == 4
    assert resumed["start_iter"] == 4 and resumed["iterations_done"] == 8
    assert resumed["images_seen"] == 32  # the same images as the uninterrupted run
    assert resumed["resumed_from"]["world_size"] == 2
    assert "classification/top1" in resumed["metrics"]
