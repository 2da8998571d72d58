"""What a verifier fits on its features: the head that predicts the label.

* ``logistic``: class-balanced logistic regression; its state is the coefficients.
* ``gradient_boosting``: gradient-boosted trees (scikit-learn's
  ``HistGradientBoostingClassifier``) on embedding features; its state is the tree
  nodes, and prediction walks them with NumPy.

Both save plain JSON, so a saved head loads without unpickling anything. Which head, and
its settings, are a :class:`HeadSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    # Imported where it is built: scikit-learn's estimators load its progress bars (rich).
    from sklearn.linear_model import LogisticRegression


class HeadSettings(BaseModel):
    """Which head a verifier or a stack fits and how: ``head`` is ``logistic`` (setting:
    ``C``) or ``gradient_boosting`` (``learning_rate``, ``max_iter``, ``max_leaf_nodes``,
    ``l2_regularization``).

    Each estimator that fits a head (``Verifier``, ``VerifierJudge``, ``StackingJudge``)
    keeps these as settings of its own, under the same names and with these defaults
    (:data:`HEAD_DEFAULTS`), so scikit-learn's ``get_params`` / ``set_params`` and a
    search's suggestions reach them; :meth:`of` reads them off the estimator and validates
    them, when it makes its head."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    head: Literal["logistic", "gradient_boosting"] = "logistic"
    C: float = Field(default=1.0, gt=0, description="Inverse regularisation strength of the logistic head.")
    learning_rate: float = Field(default=0.1, gt=0, description="Shrinkage of each boosting iteration.")
    max_iter: int = Field(default=100, ge=1, description="Boosting iterations.")
    max_leaf_nodes: int = Field(default=15, ge=2, description="Leaves of each tree.")
    l2_regularization: float = Field(default=1.0, ge=0, description="L2 penalty on the leaves' values.")

    @classmethod
    def of(cls, estimator: Any) -> HeadSettings:
        """The settings ``estimator`` holds under these names; a bad one is a one-line error
        naming the estimator, the setting and its value."""
        try:
            return cls(**{name: getattr(estimator, name) for name in cls.model_fields})
        except ValidationError as error:
            first = error.errors()[0]
            raise ValueError(
                f"{type(estimator).__name__}: setting '{first['loc'][0]}': {first['msg']}, got {first['input']!r}"
            ) from None

    def make(self) -> LogisticHead | GradientBoostingHead:
        """An unfitted head with these settings."""
        if self.head == "logistic":
            return LogisticHead(C=self.C)
        return GradientBoostingHead(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
        )


HEAD_DEFAULTS = HeadSettings()


class LogisticHead:
    """Class-balanced logistic regression; its state is the coefficients."""

    kind = "logistic"

    def __init__(self, C: float = HEAD_DEFAULTS.C) -> None:
        self.C = C
        self.model: LogisticRegression | None = None

    def fit(self, features: Any, y: np.ndarray) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=3000).fit(features, y)
        return self

    def predict_proba(self, features: Any, n_labels: int) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the head before predicting")
        return _in_label_order(self.model.classes_, self.model.predict_proba(features), n_labels)

    def state(self) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError("fit the head before saving it")
        m = self.model
        return {
            "kind": self.kind,
            "C": self.C,
            "classes": m.classes_.tolist(),
            "coef": m.coef_.tolist(),
            "intercept": m.intercept_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogisticHead:
        """A fitted logistic regression from its coefficients: nothing to unpickle."""
        from sklearn.linear_model import LogisticRegression

        head = cls(float(state.get("C", 1.0)))
        model = LogisticRegression()
        model.classes_ = np.asarray(state["classes"])
        model.coef_ = np.asarray(state["coef"], dtype=float)
        model.intercept_ = np.asarray(state["intercept"], dtype=float)
        head.model = model
        return head


SKLEARN_MAX_BINS = 255


class GradientBoostingHead:
    """Gradient-boosted trees (``HistGradientBoostingClassifier``).

    Not class-weighted: with ``class_weight="balanced"`` scikit-learn 1.9 fitted 2,000
    rows of 1,537 embedding features 40× slower (88 s vs 2.2 s for 20 iterations), and
    the decision cut chosen afterwards corrects for the class balance anyway.

    63 bins per feature, not scikit-learn's 255: a verifier fits on a few thousand rows at
    most, and with at least 20 rows to a leaf finer bins add candidate splits no leaf can
    use, while the split search over 1,537 embedding features costs in proportion to the
    bins (5.6 s → 2.4 s a fit on 1,500 rows; the search fits this head 30 times a stack).

    scikit-learn can only pickle a fitted model; its trees are plain arrays, so the state
    here is the tree nodes as JSON and prediction walks them with NumPy. A test pins the
    result to scikit-learn's own ``predict_proba``."""

    kind = "gradient_boosting"
    NODE_FIELDS: ClassVar[tuple[str, ...]] = (
        "value",
        "feature_idx",
        "num_threshold",
        "missing_go_to_left",
        "left",
        "right",
        "is_leaf",
    )

    def __init__(
        self,
        learning_rate: float = HEAD_DEFAULTS.learning_rate,
        max_iter: int = HEAD_DEFAULTS.max_iter,
        max_leaf_nodes: int = HEAD_DEFAULTS.max_leaf_nodes,
        l2_regularization: float = HEAD_DEFAULTS.l2_regularization,
        min_samples_leaf: int = 20,
        max_bins: int = 63,
        seed: int = 0,
    ) -> None:
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.min_samples_leaf = min_samples_leaf
        self.max_bins = max_bins
        self.seed = seed
        self.classes: np.ndarray | None = None
        self.baseline: np.ndarray | None = None
        self.trees: list[list[dict[str, np.ndarray]]] = []

    def fit(self, features: Any, y: np.ndarray) -> GradientBoostingHead:
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            min_samples_leaf=self.min_samples_leaf,
            max_bins=self.max_bins,
            early_stopping=False,
            random_state=self.seed,
        )
        model.fit(np.asarray(features.toarray() if hasattr(features, "toarray") else features, dtype=float), y)
        self.classes = np.asarray(model.classes_)
        self.baseline = np.asarray(model._baseline_prediction, dtype=float).reshape(-1)
        self.trees = [
            [{name: np.asarray(predictor.nodes[name]) for name in self.NODE_FIELDS} for predictor in iteration]
            for iteration in model._predictors
        ]
        if any(np.asarray(p.nodes["is_categorical"]).any() for it in model._predictors for p in it):
            raise ValueError("categorical splits are not expected: verifier features are numeric")
        return self

    def raw_scores(self, features: Any) -> np.ndarray:
        if self.baseline is None:
            raise RuntimeError("fit the head before predicting")
        x = np.asarray(features.toarray() if hasattr(features, "toarray") else features, dtype=float)
        scores = np.tile(self.baseline, (x.shape[0], 1))
        rows = np.arange(x.shape[0])
        for iteration in self.trees:
            for k, tree in enumerate(iteration):
                node = np.zeros(x.shape[0], dtype=np.int64)
                while True:
                    inner = tree["is_leaf"][node] == 0
                    if not inner.any():
                        break
                    at = node[inner]
                    value = x[rows[inner], tree["feature_idx"][at]]
                    left = np.where(
                        np.isnan(value), tree["missing_go_to_left"][at] == 1, value <= tree["num_threshold"][at]
                    )
                    node[inner] = np.where(left, tree["left"][at], tree["right"][at])
                scores[:, k] += tree["value"][node]
        return scores

    def predict_proba(self, features: Any, n_labels: int) -> np.ndarray:
        scores = self.raw_scores(features)
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            proba = np.column_stack([1 - positive, positive])
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            proba = shifted / shifted.sum(axis=1, keepdims=True)
        assert self.classes is not None
        return _in_label_order(self.classes, proba, n_labels)

    def state(self) -> dict[str, Any]:
        if self.baseline is None or self.classes is None:
            raise RuntimeError("fit the head before saving it")
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "max_iter": self.max_iter,
            "max_leaf_nodes": self.max_leaf_nodes,
            "l2_regularization": self.l2_regularization,
            "min_samples_leaf": self.min_samples_leaf,
            # Absent means scikit-learn's 255, as in heads saved before it was recorded.
            **({"max_bins": self.max_bins} if self.max_bins != SKLEARN_MAX_BINS else {}),
            "seed": self.seed,
            "classes": self.classes.tolist(),
            "baseline": self.baseline.tolist(),
            "trees": [[{name: tree[name].tolist() for name in self.NODE_FIELDS} for tree in it] for it in self.trees],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GradientBoostingHead:
        settings = ("learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization", "min_samples_leaf", "seed")
        bins = state.get("max_bins", SKLEARN_MAX_BINS)
        head = cls(**{key: state[key] for key in settings if key in state}, max_bins=bins)
        head.classes = np.asarray(state["classes"])
        head.baseline = np.asarray(state["baseline"], dtype=float)
        dtypes = {"feature_idx": np.int64, "left": np.int64, "right": np.int64, "is_leaf": np.uint8}
        head.trees = [
            [
                {name: np.asarray(tree[name], dtype=dtypes.get(name, float)) for name in cls.NODE_FIELDS}
                for tree in iteration
            ]
            for iteration in state["trees"]
        ]
        return head


HEADS: dict[str, Any] = {"logistic": LogisticHead, "gradient_boosting": GradientBoostingHead}


def head_from_state(state: dict[str, Any]) -> LogisticHead | GradientBoostingHead:
    """A fitted head from its state, by its ``kind`` (``logistic`` when a state has none)."""
    kind = state.get("kind", "logistic")
    if kind not in HEADS:
        raise ValueError(
            f"unknown head kind {kind!r}; this judgecal reads {', '.join(map(repr, HEADS))}. "
            "A judge saved by a newer judgecal loads with that version: upgrade judgecal"
        )
    return HEADS[kind].from_state(state)


def _in_label_order(classes: np.ndarray, proba: np.ndarray, n_labels: int) -> np.ndarray:
    out = np.zeros((proba.shape[0], n_labels))
    out[:, np.asarray(classes, dtype=int)] = proba
    return out
