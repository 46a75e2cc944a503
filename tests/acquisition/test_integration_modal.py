"""The modAL query strategy inside a real modAL ActiveLearner (extra ``modal``)."""

from __future__ import annotations

import numpy as np
import pytest

from xal_core.acquisition.strategies import ScoreTable, make_strategy
from xal_core.integrations.modal import make_query_strategy

modal_models = pytest.importorskip(
    "modAL.models", reason="modAL is an optional extra: pip install 'xal-ml[modal]' (the dev extra includes it)"
)
linear_model = pytest.importorskip("sklearn.linear_model", reason="modAL needs scikit-learn")


def pool(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    dice = rng.random(n)
    dice[::7] = np.nan  # some images without an ROI
    return X, y, dice


def expected(learner, X, dice, k, **params):
    table = ScoreTable(ids=np.arange(len(X)), probabilities=learner.predict_proba(X), dice=dice)
    return make_strategy("dual", **params).select(table, k).ids.tolist()


def test_active_learner_queries_with_the_dual_score_round_after_round():
    # modAL 0.4.2.1's teach()/fit() call check_X_y(force_all_finite=...), which scikit-learn >= 1.8 removed
    # (modAL issue #196), so each round builds the learner on the grown labelled set: the query path is
    # what xal provides, and it is the same either way.
    X, y, dice = pool()
    labelled = [0, 1, 2, 3, 4, 5]
    assert len(set(y[labelled])) == 2
    unlabelled = [i for i in range(len(X)) if i not in labelled]
    for _ in range(3):
        X_pool = X[unlabelled]
        learner = modal_models.ActiveLearner(
            estimator=linear_model.LogisticRegression(),
            # a callable: the Dice of the rows still in the pool, whatever modAL passes as X_pool
            query_strategy=make_query_strategy("dual", dice=lambda learner, X_query, rows=tuple(unlabelled): dice[list(rows)], weight=0.6),
            X_training=X[labelled],
            y_training=y[labelled],
        )
        want = expected(learner, X_pool, dice[unlabelled], 4, weight=0.6)
        indices, rows = learner.query(X_pool, n_instances=4)
        assert indices.tolist() == want
        np.testing.assert_array_equal(rows, X_pool[indices])
        chosen = [unlabelled[i] for i in indices]
        labelled += chosen
        unlabelled = [i for i in unlabelled if i not in chosen]
    assert len(labelled) == 6 + 12 and len(set(labelled)) == 18


def test_query_metrics_are_the_scores_of_the_chosen_items():
    X, y, dice = pool(1)
    learner = modal_models.ActiveLearner(
        estimator=linear_model.LogisticRegression(),
        query_strategy=make_query_strategy("dual_rank", dice=dice),
        X_training=X[:10],
        y_training=y[:10],
    )
    indices, rows, metrics = learner.query(X, n_instances=3, return_metrics=True)
    table = ScoreTable(ids=np.arange(len(X)), probabilities=learner.predict_proba(X), dice=dice)
    np.testing.assert_array_equal(metrics, make_strategy("dual_rank").scores(table)[indices])
    assert np.all(np.diff(metrics) <= 0)


def test_stochastic_strategy_is_reproducible_across_a_run():
    X, y, dice = pool(2)

    def run(seed):
        learner = modal_models.ActiveLearner(
            estimator=linear_model.LogisticRegression(),
            query_strategy=make_query_strategy("dual", dice=dice, diversity="power", beta=2.0, seed=seed),
            X_training=X[:10],
            y_training=y[:10],
        )
        return [learner.query(X, n_instances=5)[0].tolist() for _ in range(3)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_stale_dice_array_is_refused_with_a_hint():
    X, y, dice = pool(3)
    learner = modal_models.ActiveLearner(
        estimator=linear_model.LogisticRegression(),
        query_strategy=make_query_strategy("dual", dice=dice[:-1]),
        X_training=X[:10],
        y_training=y[:10],
    )
    with pytest.raises(ValueError, match="dice: expected 40 pool rows .* pass a callable"):
        learner.query(X, n_instances=2)


def test_query_function_is_named_after_the_strategy():
    assert make_query_strategy("entropy").__name__ == "xal_entropy_sampling"
    assert make_query_strategy("dual", diversity="power").__name__ == "xal_dual_power_sampling"
