"""Per-round test metrics: hand-made cases, scikit-learn as the reference, ``evaluate`` vs the contract."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xal_core.loop.metrics import RoundMetrics, auroc, classification_metrics, evaluate, interpretability_metrics
from xal_core.loop.metrics_file import METRICS_COLUMNS, append_metrics_csv, read_metrics_csv
from xal_core.models import ExplainableModel, Preprocessing, build_backbone
from xal_core.scoring import Roi, cam_alignment


def one_hot_scores(predictions, classes, confidence=0.8):
    """Probabilities whose argmax is ``predictions``."""
    scores = np.full((len(predictions), classes), (1 - confidence) / (classes - 1))
    scores[np.arange(len(predictions)), predictions] = confidence
    return scores


# ---------------------------------------------------------------------------------- hand-made cases
def test_hand_computed_three_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    got = classification_metrics(labels, one_hot_scores([0, 1, 1, 1, 2, 0], 3))
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # F1 per class: 2TP / (2TP + FP + FN) = 2/4, 4/5, 2/3
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_class_missing_from_labels_but_predicted():
    labels = np.array([0, 0, 1, 1])
    got = classification_metrics(labels, one_hot_scores([0, 2, 1, 1], 3))
    assert got["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # class 2 has no recall
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # class 2 predicted: counts with F1 = 0


def test_class_neither_present_nor_predicted_does_not_count():
    got = classification_metrics(np.array([0, 1, 1]), one_hot_scores([0, 1, 0], 4))
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert got["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2)


def test_auroc_hand_computed_with_ties():
    assert auroc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([0, 0, 1, 1], bool), np.full(4, 0.5)) == pytest.approx(0.5)
    # pairs (pos, neg): (.5,.5) = 1/2, (.5,.1) = 1, (.9,.5) = 1, (.9,.1) = 1
    assert auroc(np.array([1, 1, 0, 0], bool), np.array([0.5, 0.9, 0.5, 0.1])) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc(np.ones(3, bool), np.arange(3.0)))


def test_auroc_undefined_with_one_class_and_multiclass_skips_classes_without_both():
    assert math.isnan(classification_metrics(np.array([1, 1, 1]), one_hot_scores([1, 0, 1], 2))["auroc"])
    assert math.isnan(classification_metrics(np.array([2, 2]), one_hot_scores([1, 2], 3))["auroc"])
    labels = np.array([0, 0, 1, 1])  # class 2 absent: its one-vs-rest AUROC has no positives, left out
    scores = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.5, 0.4, 0.1]])
    expected = (auroc(labels == 0, scores[:, 0]) + auroc(labels == 1, scores[:, 1])) / 2
    assert classification_metrics(labels, scores)["auroc"] == pytest.approx(expected)


def test_binary_auroc_uses_the_positive_column():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    assert classification_metrics(labels, scores)["auroc"] == pytest.approx(auroc(labels == 1, scores[:, 1]))


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        (np.array([0, 1]), np.zeros((3, 2)), "labels"),
        (np.array([0, 2]), np.zeros((2, 2)), r"\[0, 2\)"),
        (np.array([0.0, 1.0]), np.zeros((2, 2)), "integers"),
        (np.array([], dtype=int), np.zeros((0, 2)), "no test items"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
        (np.array([0, 1]), np.zeros((2, 1)), "K >= 2"),
    ],
)
def test_bad_classification_inputs(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, scores)


# ---------------------------------------------------------------------------------- vs scikit-learn
def test_classification_matches_sklearn_on_random_inputs(rng):
    sk = pytest.importorskip("sklearn.metrics")
    for trial in range(60):
        classes = int(rng.choice([2, 3, 5]))
        n = int(rng.choice([2, 7, 13, 31, 101]))
        present = rng.choice(classes, size=int(rng.integers(1, classes + 1)), replace=False)  # classes may be missing
        labels = rng.choice(present, size=n)
        logits = np.round(rng.normal(size=(n, classes)) * 2, 1 if trial % 2 else 0)  # coarse: many ties
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        got = classification_metrics(labels, probabilities)
        predictions = probabilities.argmax(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
            assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predictions))
            assert got["macro_f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"))
        expected = _sklearn_auroc(sk, labels, probabilities)
        assert got["auroc"] == pytest.approx(expected, nan_ok=True), (trial, labels, probabilities)


def _sklearn_auroc(sk, labels, probabilities):
    classes = probabilities.shape[1]
    if classes == 2:
        return sk.roc_auc_score(labels, probabilities[:, 1]) if len(set(labels)) == 2 else math.nan
    if len(set(labels)) == classes:
        return sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    areas = [sk.roc_auc_score(labels == c, probabilities[:, c])
             for c in range(classes) if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean(areas)) if areas else math.nan


# ---------------------------------------------------------------------------------- interpretability
def test_interpretability_means_over_known_rois():
    dice = np.array([1.0, 0.0, np.nan, 0.5])
    soft = np.array([0.9, 0.2, np.nan, 0.4])
    energy = np.array([0.8, 0.0, np.nan, 0.6])
    known = np.array([True, True, False, True])  # item 1: a known empty ROI with an attended map (Dice 0) counts
    got = interpretability_metrics(dice, soft, energy, known)
    assert got == pytest.approx({"cam_dice": 0.5, "cam_soft_dice": 0.5, "cam_energy": 1.4 / 3})
    none = interpretability_metrics(dice, soft, energy, np.zeros(4, bool))
    assert all(math.isnan(v) for v in none.values())
    broken = interpretability_metrics(np.array([np.nan, 1.0]), np.ones(2), np.ones(2), np.ones(2, bool))
    assert math.isnan(broken["cam_dice"]) and broken["cam_soft_dice"] == 1.0


def test_interpretability_rejects_bad_shapes():
    with pytest.raises(ValueError, match="roi_known"):
        interpretability_metrics(np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="cam_energy"):
        interpretability_metrics(np.ones(2), np.ones(2), np.ones(3), np.ones(2, bool))


# ---------------------------------------------------------------------------------- evaluate
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def tiny_model():
    torch.manual_seed(3)
    return ExplainableModel(build_backbone("resnet18", in_channels=1, num_classes=3))


def make_inputs(gen):
    """Inputs: 11 images, masks with an unknown and a known-empty ROI."""
    images = torch.rand(11, 1, 32, 32, generator=gen)
    masks = torch.rand(11, 32, 32, generator=gen) > 0.7
    masks[4] = False
    known = torch.ones(11, dtype=torch.bool)
    known[2] = False
    return images, torch.randint(0, 3, (11,), generator=gen), Roi.from_masks(masks, known)


def direct_metrics(model, images, labels, roi, threshold=0.5):
    model.eval()
    with torch.no_grad():
        logits, features, weights = model(images)
    scores = cam_alignment(features, weights, roi, threshold=threshold)
    return RoundMetrics(
        **classification_metrics(labels.numpy(), torch.softmax(logits.double(), 1).numpy()),
        **interpretability_metrics(scores.dice.numpy(), scores.soft_dice.numpy(), scores.roi_energy.numpy(),
                                   roi.known.numpy()),
    )


def assert_close(got: RoundMetrics, expected: RoundMetrics):
    for name in METRICS_COLUMNS[4:]:
        assert getattr(got, name) == pytest.approx(getattr(expected, name), abs=1e-5, nan_ok=True), name


def test_evaluate_matches_a_direct_computation(tiny_model, gen):
    images, labels, roi = make_inputs(gen)
    tiny_model.train()
    got = evaluate(tiny_model, images, labels, roi, batch_size=4, threshold=0.4)
    assert tiny_model.training  # restored
    assert_close(got, direct_metrics(tiny_model, images, labels, roi, threshold=0.4))
    assert not math.isnan(got.cam_dice) and not math.isnan(got.auroc)


def test_evaluate_applies_the_normalisation(tiny_model, gen):
    images, labels, roi = make_inputs(gen)
    pre = Preprocessing((32, 32), 1, (0.4,), (0.3,))
    expected = direct_metrics(tiny_model, (images - 0.4) / 0.3, labels, roi)
    assert_close(evaluate(tiny_model, images, labels, roi, normalise=pre), expected)
    assert_close(evaluate(tiny_model, images, labels, roi, normalise=lambda x: (x - 0.4) / 0.3), expected)


class ConvNoGap(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 2))

    def forward(self, x):
        return self.head(self.features(x))


def test_evaluate_with_an_autograd_cam_model(gen):
    torch.manual_seed(1)
    model = ExplainableModel(ConvNoGap(), target_layer="features")
    images = torch.rand(6, 1, 32, 32, generator=gen)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    roi = Roi.from_boxes([torch.tensor([[8.0, 8.0, 20.0, 24.0]])] * 5 + [None], size=(32, 32))
    assert_close(evaluate(model, images, labels, roi, batch_size=5), direct_metrics(model, images, labels, roi))


def test_evaluate_rejects_mismatched_roi(tiny_model):
    with pytest.raises(ValueError, match="roi"):
        evaluate(tiny_model, torch.rand(3, 1, 32, 32), torch.zeros(3, dtype=torch.long),
                 Roi.from_masks(torch.zeros(2, 32, 32, dtype=torch.bool)))


# ---------------------------------------------------------------------------------- metrics.csv
def test_metrics_csv_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    first = RoundMetrics(0.1 + 0.2, 0.5, 1 / 3, math.nan, 0.25, 0.125, 2 / 7)
    rows = [first.to_row(strategy="random", seed=0, round=0, labels=20),
            first.to_row(strategy="dual, λ=0.5", seed=1, round=2, labels=60)]
    append_metrics_csv(path, rows[:1])
    append_metrics_csv(path, rows[1:])
    assert path.read_text().splitlines()[0] == ",".join(METRICS_COLUMNS)
    assert len(path.read_text().splitlines()) == 3
    back = read_metrics_csv(path)
    assert [list(r) for r in back] == [list(METRICS_COLUMNS)] * 2
    assert back[1]["strategy"] == "dual, λ=0.5" and back[1]["round"] == 2 and isinstance(back[1]["labels"], int)
    assert back[0]["accuracy"] == 0.1 + 0.2 and back[0]["macro_f1"] == 1 / 3  # exact
    assert math.isnan(back[0]["auroc"])


def test_metrics_csv_rejects_bad_rows_and_headers(tmp_path):
    row = RoundMetrics(*[0.5] * 7).to_row(strategy="random", seed=0, round=0, labels=10)
    with pytest.raises(ValueError, match="missing columns"):
        append_metrics_csv(tmp_path / "a.csv", [{k: v for k, v in row.items() if k != "auroc"}])
    with pytest.raises(ValueError, match="integer"):
        append_metrics_csv(tmp_path / "a.csv", [{**row, "labels": 10.5}])
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        append_metrics_csv(other, [row])
    with pytest.raises(ValueError, match="header"):
        read_metrics_csv(other)
