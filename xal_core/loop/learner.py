"""``ActiveLearner``: rounds of train → evaluate → export → score the pool → acquire → annotate.

The ledger is the run's memory, and every step starts by reading it, so a run killed at any point
continues where it stopped when started again:

* acquisitions recorded but not annotated go back to the oracle, never re-selected;
* a round whose metrics are recorded is not evaluated again; its model is reloaded from the
  round's checkpoint, or retrained bit for bit (training is a function of the labeled set and
  seeds alone) if the process died before the checkpoint was written;
* a round whose next acquisitions are recorded is skipped entirely.

Each arm (strategy × seed) starts from the same initial labels for a given seed, and its round-r
model from the same initial weights, so arms differ only in what they acquired.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from xal_core.acquisition.strategies import Acquisition, NoRoiWarning, Strategy, make_strategy, reads_rois
from xal_core.models import Checkpoint, ExplainableModel, build_backbone, export, load_checkpoint
from xal_core.models.weights import load_weights
from xal_core.train import fit

from .annotations import roi_drawn
from .experiment import ExperimentData
from .extras import extras_for
from .ledger import AcquisitionRow, Arm, Ledger
from .metrics import METRIC_NAMES, RoundMetrics, evaluate
from .metrics_file import (
    ANNOTATION_COST_FILE,
    ROIS_DRAWN,
    TRAINING_COLUMN,
    VAL_METRICS_FILE,
    VAL_PREFIX,
    append_metrics_csv,
    write_annotation_cost,
)
from .oracle import FileOracle, Oracle, write_labelling_sheet
from .protocol import INITIAL_STRATEGY, Protocol
from .report.overlays import overlay_path, write_overlays
from .report.stats import series_name
from .scorers import PoolScorer, ScoredPool
from .seeds import derived_seed
from .training import round_training_set, train_config

__all__ = ["ActiveLearner", "NeedsAnnotations", "RoundEvent", "checkpoint_path"]


def checkpoint_path(run_dir: str | Path, arm: Arm, round: int) -> Path:
    """Where the loop keeps ``arm``'s model of ``round`` (only the newest round's stays on disk):
    the model that acquired round ``round + 1``'s items, whose Grad-CAM the annotator shows."""
    return Path(run_dir) / "models" / arm.strategy / f"seed-{arm.seed}" / f"round-{round:02d}.pt"


class NeedsAnnotations(RuntimeError):
    """The oracle has not answered every acquired item yet (a person is labelling them)."""

    def __init__(self, sheet: Path, count: int) -> None:
        super().__init__(f"{count} acquired item(s) await labels: fill in {sheet} and run the same command again")
        self.sheet, self.count = sheet, count


@dataclass(frozen=True)
class RoundEvent:
    """What the learner reports to a progress display: an arm, a round, a phase."""

    arm: Arm
    round: int
    phase: str  # "annotate", "train", "evaluate", "export", "score", "acquire", "done"
    done: int = 0
    total: int = 0


class ActiveLearner:
    """Run every arm of a protocol to its label budget, durably.

    Args:
        run_dir: the run folder: ``ledger.sqlite``, ``models/``, ``overlays/``, ``metrics.csv``.
        protocol: strategies, seeds, budget, training recipe.
        data: the pool store and the held-out splits (``prepare_data``).
        scorer: scores the unlabeled pool with each round's exported model (in-process or through
            the gRPC service; the rankings are identical).
        oracle: reveals labels (simulated) or imports them from a sheet a person filled in.
        ledger: the open ledger (``Ledger.open(run_dir / "ledger.sqlite", run_config=...)``).
        device: where models train and are evaluated (default: CUDA when available).
        overlay_images: test images in the report's Grad-CAM grid (the first of the test split).
        on_event: progress callback.
    """

    def __init__(self, run_dir: str | Path, protocol: Protocol, data: ExperimentData, scorer: PoolScorer,
                 oracle: Oracle, ledger: Ledger, *, device: str | None = None, overlay_images: int = 8,
                 on_event: Callable[[RoundEvent], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.protocol, self.data, self.scorer, self.oracle, self.ledger = protocol, data, scorer, oracle, ledger
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda"):  # fp32 training as on the CPU (and as the calibration ran)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.overlay_images = overlay_images
        self.on_event = on_event or (lambda event: None)
        self.pool = data.pool
        if protocol.labels_at(0) > len(self.pool):
            raise ValueError(f"initial: {protocol.initial} labels asked of a pool of {len(self.pool)} items")
        self._warned_no_roi = False
        self._strategies: dict[Arm, Strategy] = {}
        self._check_rois()
        self._check_roi_training()

    def _check_roi_training(self) -> None:
        """ROI training on a pool without a single ROI would quietly train as without: refuse it at
        the start. (A person answering through a sheet or the browser may draw ROIs the pool lacks.)"""
        if not self.protocol.train.uses_rois or self.oracle.draws_rois or self.pool.roi_known().any():
            return
        raise ValueError(f"{self.data.pool_path}: training with ROIs ({self.protocol.train.label}) asked for, but no "
                         "item of the pool has an ROI; drop --roi-loss/--roi-augment or give ROIs")

    def _check_rois(self) -> None:
        """Say at the start, not mid-run, when ROI-based strategies will have no ROI to use."""
        needs_roi = [s for s in self.protocol.strategies if reads_rois(s)]
        if not needs_roi or self.pool.roi_known().any():
            return
        if self.protocol.scoring.missing_roi == "exclude":
            raise ValueError(f"{self.data.pool_path}: no item of the pool has an ROI, and missing_roi='exclude' leaves "
                             f"{', '.join(needs_roi)} nothing to acquire; use missing_roi='uncertainty_only' or give ROIs")
        self._warned_no_roi = True
        warnings.warn(f"{self.data.pool_path}: no item of the pool has an ROI: {', '.join(needs_roi)} fall(s) back to "
                      "the missing-ROI policy 'uncertainty_only', i.e. rank by uncertainty alone", NoRoiWarning,
                      stacklevel=3)

    # ------------------------------------------------------------------ the whole run
    def arms(self) -> list[Arm]:
        """Seed-major, so the first seed's comparison of every strategy is complete first."""
        return [Arm(strategy, seed) for seed in self.protocol.seeds for strategy in self.protocol.strategies]

    def run(self) -> list[dict]:
        """Every arm to its budget; returns the metrics rows (``metrics.csv``), also written."""
        for arm in self.arms():
            self.run_arm(arm)
        return self.write_metrics()

    def metrics_rows(self, prefix: str = "") -> list[dict]:
        """The rows of ``metrics.csv`` (the test split), or with ``prefix=VAL_PREFIX`` those of
        ``metrics_val.csv`` (rounds evaluated on the validation split)."""
        rows = []
        for arm in self.arms():
            for record in self.ledger.rounds(arm):
                if prefix and f"{prefix}{METRIC_NAMES[0]}" not in record.metrics:
                    continue  # no validation split, or a round recorded before it was evaluated
                rows.append({"strategy": arm.strategy, "seed": arm.seed, "round": record.round,
                             "labels": record.labels, **{k: record.metrics.get(f"{prefix}{k}", float("nan"))
                                                         for k in METRIC_NAMES}})
                if self.protocol.train.label:  # the column exists only for non-default training
                    rows[-1][TRAINING_COLUMN] = self.protocol.train.label
        return rows

    def write_metrics(self) -> list[dict]:
        """``metrics.csv`` (and ``metrics_val.csv``) rebuilt from the ledger (the source of truth),
        each written atomically."""
        rows = self.metrics_rows()
        for name, content in (("metrics.csv", rows), (VAL_METRICS_FILE, self.metrics_rows(VAL_PREFIX))):
            if not content and name == VAL_METRICS_FILE:
                continue
            target = self.run_dir / name
            scratch = target.with_name(name + ".tmp")
            scratch.unlink(missing_ok=True)
            append_metrics_csv(scratch, content)
            os.replace(scratch, target)
        costs = [{"strategy": arm.strategy, "seed": arm.seed, "round": record.round, "labels": record.labels,
                  ROIS_DRAWN: record.metrics[ROIS_DRAWN]}
                 for arm in self.arms() for record in self.ledger.rounds(arm) if ROIS_DRAWN in record.metrics]
        if costs:
            write_annotation_cost(self.run_dir / ANNOTATION_COST_FILE, costs)
        return rows

    # ------------------------------------------------------------------ one arm
    def run_arm(self, arm: Arm) -> None:
        protocol = self.protocol
        if not self.ledger.acquisitions(arm, round=0):
            self._acquire_initial(arm)
        for round in range(protocol.rounds + 1):
            self._annotate(arm, round)
            recorded = {record.round for record in self.ledger.rounds(arm)}
            last = round == protocol.rounds or self._pool_exhausted(arm)
            acquired_next = last or bool(self.ledger.acquisitions(arm, round=round + 1))
            if round in recorded and acquired_next:
                if last:
                    self._overlays(arm, round)
                    break
                continue
            path, version = self._model(arm, round)
            saved = load_checkpoint(path)  # once per round: evaluation and export share it
            if round not in recorded:
                self._evaluate(arm, round, saved, version)
            if last:
                self._overlays(arm, round, saved)
                break
            self._acquire(arm, round, path, saved, version)
        self.on_event(RoundEvent(arm, protocol.rounds, "done"))

    def _pool_exhausted(self, arm: Arm) -> bool:
        return len(self.ledger.labeled(arm)) + len(self.ledger.pending(arm)) >= len(self.pool)

    # ------------------------------------------------------------------ steps
    def _acquire_initial(self, arm: Arm) -> None:
        """The seed's random initial labels: the same items for every strategy of this seed."""
        rng = np.random.default_rng(derived_seed("initial", arm.seed))
        ids = rng.choice(len(self.pool), size=self.protocol.initial, replace=False)
        sources = self._source_ids(ids)
        rows = [AcquisitionRow(item_id=int(i), source_id=sources[int(i)], rank=rank) for rank, i in enumerate(ids)]
        self.ledger.record_acquisitions(arm, 0, rows, model_version=INITIAL_STRATEGY)

    def _annotate(self, arm: Arm, round: int) -> None:
        pending = self.ledger.pending(arm)
        if not pending:
            return
        self.on_event(RoundEvent(arm, round, "annotate", 0, len(pending)))
        sheet = self.oracle.path if isinstance(self.oracle, FileOracle) else self.run_dir / "to_label.csv"
        if isinstance(self.oracle, FileOracle) and not sheet.is_file():
            missing = pending  # nobody has been asked yet: write the sheet first
        else:
            answer = self.oracle.annotate(pending)
            if answer.annotations:
                self.ledger.record_annotations(arm, answer.annotations)
            missing = answer.missing
        if missing:
            write_labelling_sheet(sheet, missing, self._source_ids(missing), self.data.class_names)
            raise NeedsAnnotations(sheet, len(missing))

    def _model(self, arm: Arm, round: int) -> tuple[Path, str]:
        """The round's checkpoint (trained now unless already on disk) and its version string."""
        path = self._arm_dir(arm) / checkpoint_path(self.run_dir, arm, round).name
        if not path.is_file():
            self._train(arm, round, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return path, f"{arm.strategy}/seed-{arm.seed}/round-{round}@{digest}"

    def _train(self, arm: Arm, round: int, path: Path) -> None:
        recipe = self.protocol.train
        previous = self._arm_dir(arm) / checkpoint_path(self.run_dir, arm, round - 1).name
        if recipe.warm_start and round > 0 and not previous.is_file():
            self._model(arm, round - 1)  # lost: retrained from its own predecessor, with its own labels
        labeled = round_training_set(self.ledger, arm, round, self.data.size, with_rois=recipe.uses_rois)
        self.on_event(RoundEvent(arm, round, "train", 0, len(labeled)))
        images = self.pool.images(labeled.ids)
        torch.manual_seed(derived_seed("weights", arm.seed, round))  # same start for every strategy
        backbone = build_backbone(recipe.backbone(self.data.channels, len(self.data.class_names)))
        if recipe.warm_start and round > 0:
            load_weights(backbone, previous)
        config = train_config(recipe, seed=derived_seed("fit", arm.seed, round), device=self.device)
        val = self.data.val
        scratch = path.with_name(path.name + ".tmp.pt")
        fit(backbone, images, labeled.labels, config=config, class_names=self.data.class_names,
            val_data=None if val is None else val.images, val_labels=None if val is None else val.labels,
            checkpoint_path=scratch, progress=False, rois=labeled.rois)
        os.replace(scratch, path)  # a checkpoint on disk is always a whole one
        for older in self._arm_dir(arm).glob("round-*.pt"):
            if older != path and older.name < path.name:
                older.unlink()  # only the newest round's model is ever needed again

    def _explainable(self, saved: Checkpoint) -> ExplainableModel:
        return ExplainableModel(saved.build()).to(self.device).eval()

    def _evaluate(self, arm: Arm, round: int, saved: Checkpoint, version: str) -> RoundMetrics:
        self.on_event(RoundEvent(arm, round, "evaluate", 0, len(self.data.test)))
        model = self._explainable(saved)
        test = self.data.test
        metrics = evaluate(model, test.images, test.labels, test.roi, threshold=self.protocol.scoring.threshold,
                           normalise=saved.preprocessing)
        labels = len(self.ledger.labeled(arm))
        row = metrics.to_row(strategy=arm.strategy, seed=arm.seed, round=round, labels=labels)
        recorded = {k: float(row[k]) for k in METRIC_NAMES}
        # What the labels cost beyond the labels: how many of them came with a drawn ROI.
        recorded[ROIS_DRAWN] = float(sum(roi_drawn(answer.roi) for answer in self.ledger.annotations(arm)))
        if self.data.val is not None and len(self.data.val):
            # The validation split's metrics, kept beside the test's: every protocol choice (the
            # calibration, the recipe) is made on these, never on the test split (metrics_val.csv).
            val = self.data.val
            val_metrics = evaluate(model, val.images, val.labels, val.roi, threshold=self.protocol.scoring.threshold,
                                   normalise=saved.preprocessing)
            recorded.update({f"{VAL_PREFIX}{k}": float(v) for k, v in asdict(val_metrics).items()})
        self.ledger.record_round(arm, round, labels, recorded, version)
        self.write_metrics()
        return metrics

    def _acquire(self, arm: Arm, round: int, checkpoint: Path, saved: Checkpoint, version: str) -> None:
        protocol = self.protocol
        model = ExplainableModel(saved.build())
        metadata = saved.metadata(model.target_layer)
        suffix = ".onnx" if protocol.export_format == "onnx" else ".ts"
        exported = checkpoint.with_suffix(suffix)
        self.on_event(RoundEvent(arm, round, "export"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, once per round
            export(model, exported, protocol.export_format, metadata=metadata, onnx_exporter="legacy")
        exclude = sorted(set(self.ledger.labeled(arm)) | set(self.ledger.pending(arm)))
        config = protocol.scoring

        def progress(done: int, total: int) -> None:
            self.on_event(RoundEvent(arm, round, "score", done, total))

        # The extra columns the arm's strategy reads (k-center's embeddings, BALD's MC passes from the
        # head of this very model, masks seeded by seed and round), and only those. Passed only when
        # there are some, so a PoolScorer written before ``extras`` existed still runs the other arms.
        extras = extras_for(protocol, arm.strategy, arm.seed, round + 1, model.linear)
        scored = self.scorer.score(exported, exclude=exclude, config=config, progress=progress,
                                   **({"extras": extras} if extras else {}))
        exported.unlink(missing_ok=True)
        self.on_event(RoundEvent(arm, round, "acquire"))
        strategy = self._strategy(arm)
        rng = np.random.default_rng(derived_seed("acquire", arm.strategy, arm.seed, round + 1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoRoiWarning)
            chosen = strategy.select(scored.table, protocol.per_round, rng)
        for warning in caught:
            if issubclass(warning.category, NoRoiWarning) and not self._warned_no_roi:
                self._warned_no_roi = True
                warnings.warn(str(warning.message), NoRoiWarning, stacklevel=2)
        if len(chosen.ids) == 0:
            raise RuntimeError(f"{arm}: round {round + 1} acquired nothing: every unlabeled item was excluded "
                               f"(missing-ROI policy {protocol.scoring.missing_roi!r} on a pool without ROIs?)")
        self.ledger.record_acquisitions(arm, round + 1, self._rows(scored, chosen), model_version=version)

    def _rows(self, scored: ScoredPool, chosen: Acquisition) -> list[AcquisitionRow]:
        """The selected items with their scores at selection time (what the ledger keeps)."""
        rows = []
        for rank, (item, score) in enumerate(zip(chosen.ids.tolist(), chosen.scores.tolist(), strict=True)):
            facts = scored.row(int(item))
            rows.append(AcquisitionRow(
                item_id=int(item), source_id=facts["source_id"], rank=rank, score=_finite(score),
                uncertainty=_finite(facts.get("uncertainty")), dice=_finite(facts["dice"]),
                soft_dice=_finite(facts["soft_dice"]), roi_energy=_finite(facts.get("roi_energy")),
                pointing_hit=_finite(facts.get("pointing_hit")),
                predicted_class=None if facts["invalid"] else int(facts["predicted_class"]),
                probabilities=tuple(float(p) for p in facts["probabilities"]),
            ))
        return rows

    def _overlays(self, arm: Arm, round: int, saved: Checkpoint | None = None) -> None:
        """The final model's Grad-CAM on the first test images (first seed only: one row per strategy)."""
        if arm.seed != self.protocol.seeds[0] or self.overlay_images <= 0:
            return
        target = overlay_path(self.run_dir / "overlays", series_name(arm.strategy, self.protocol.train.label))
        if target.is_file():
            return
        if saved is None:
            saved = load_checkpoint(self._model(arm, round)[0])
        model = self._explainable(saved)
        test = self.data.test
        n = min(self.overlay_images, len(test))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_overlays(target, model, test.images[:n], test.roi[:n], test.labels[:n], self.data.class_names,
                       np.arange(n), normalise=saved.preprocessing)

    # ------------------------------------------------------------------ helpers
    def _strategy(self, arm: Arm) -> Strategy:
        """The arm's strategy, built once (it warns once about a pool without ROIs, not every round)."""
        if arm not in self._strategies:
            self._strategies[arm] = make_strategy(arm.strategy, **self.protocol.strategy_params(arm.strategy))
        return self._strategies[arm]

    def _arm_dir(self, arm: Arm) -> Path:
        path = checkpoint_path(self.run_dir, arm, 0).parent
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _source_ids(self, ids: Sequence[int] | np.ndarray) -> dict[int, str]:
        ids = [int(i) for i in ids]
        return dict(zip(ids, self.pool.source_ids(ids), strict=True))


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
