"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor`` trained by minitrain's C core.

Change only the import line::

    from minitrain.sklearn import MLPClassifier, MLPRegressor

and get the same estimators: scikit-learn's parameters, defaults, fitted attributes and
methods, and the same numbers. The initialisation rule and its consumption of
``random_state``, the batch order, the L2 scaling, the learning-rate schedules, the
momentum and Adam update forms, the stopping rules and the loss definitions are
scikit-learn's, so with float64 data ``coefs_``, ``intercepts_`` and ``loss_curve_``
match scikit-learn's to rounding (the ``lbfgs`` solver to its tolerance). Every
iteration, loss and gradient is computed by the C core (``mt_step``, with the
scikit-learn loss reduction and optimizer style); scikit-learn supplies input
validation, label encoding and splits, and SciPy the L-BFGS-B optimiser.

Differences: sparse input is densified (the core works on dense rows); float32 input
is trained in float32 by every solver, ``lbfgs`` included.

Needs the ``sklearn`` extra: ``pip install "minitrain[sklearn]"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from typing_extensions import Self

try:
    import scipy.optimize
    import scipy.sparse as sp
    import sklearn  # noqa: F401
except ImportError as e:  # an optional extra
    raise ImportError('minitrain.sklearn needs scikit-learn and SciPy: pip install '
                      '"minitrain[sklearn]"') from e
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import (
    _check_partial_fit_first_call,
    type_of_target,
    unique_labels,
)
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import functional as F
from . import evaluation, threads, training
from .layers import Dense
from .models import Sequential
from .optimizers import ADAM_KIND, SGD_KIND, STYLE_SKLEARN

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# output activation -> the core's loss over the last layer's linear output
_LOSS_OF_OUTPUT = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy",
                   "identity": "mse", "exp": "poisson"}
_PREDICT_ROWS = 1024
_DENSE_CHUNK_ELEMENTS = 1 << 20


class _StochasticSolver:
    """scikit-learn's SGDOptimizer / AdamOptimizer state between calls: the learning
    rate and its schedule, the update count, and the core's flat velocity (SGD) or
    moments (Adam) buffer ``state``, which lives in the model."""

    def __init__(self, est, model):
        self.solver = est.solver
        self.learning_rate_init = est.learning_rate_init
        self.learning_rate = float(est.learning_rate_init)
        self.lr_schedule = est.learning_rate
        self.power_t = est.power_t
        self.hyper = dict(momentum=est.momentum, nesterov=est.nesterovs_momentum,
                          beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon)
        self.t = 0
        model.state_flat[:] = 0
        self.state = model.state_flat

    def attach(self, model, alpha):
        """Make the model's core update with this solver; alpha is the L2 penalty."""
        kind = SGD_KIND if self.solver == "sgd" else ADAM_KIND
        model._bind_update(kind, weight_decay=alpha, style=STYLE_SKLEARN, **self.hyper)

    def step_lr(self):
        # Adam's step size comes from learning_rate_init, bias-corrected in the core
        return self.learning_rate if self.solver == "sgd" else self.learning_rate_init

    def iteration_ends(self, time_step):
        """After each epoch; time_step counts the samples seen."""
        if self.solver == "sgd" and self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        """True to stop; the adaptive schedule divides the learning rate by 5 instead."""
        if self.solver != "sgd" or self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


def _store_params(estimator, arguments):
    """Store an estimator's constructor arguments as attributes of the same names, and
    nothing else, as scikit-learn's ``get_params``/``clone`` expect."""
    for name, value in arguments.items():
        if name != "self":
            setattr(estimator, name, value)


def _dense(X, dtype=None):
    """The core reads dense, C-contiguous rows: a sparse X is made dense a batch or a
    chunk of rows at a time (L-BFGS, which takes the whole of X, excepted)."""
    if sp.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=dtype)


class _SklearnPolicy(training.Policy):
    """scikit-learn's decisions in the runner: its batch order (one shuffle of the
    previous epoch's order per epoch, from ``random_state``), a learning rate per epoch
    (``invscaling``, ``adaptive``), its loss with the L2 term, its stopping rules and
    early stopping, and training on through a non-finite loss."""

    def __init__(self, est, model, solver, incremental, validation):
        self.est, self.model, self.solver = est, model, solver
        self.incremental, self.validation = incremental, validation
        self.scale = est._data_loss_scale()
        self.sample_idx = None

    def order(self, rows):
        if self.sample_idx is None:
            self.sample_idx = rows
        if self.est.shuffle:  # as sklearn.utils.shuffle does, without its input checks
            order = np.arange(len(rows))
            self.est._random_state.shuffle(order)
            self.sample_idx = self.sample_idx[order]
        return self.sample_idx

    def epoch_begin(self, epoch):
        self.accumulated_loss = 0.0
        self.lr = self.solver.step_lr()

    def rate(self):
        self.solver.t += 1
        return self.lr, self.solver.t, 0

    def diverged(self, runner, err, epoch, batch):
        # the core refuses an update with a non-finite loss; scikit-learn makes it (its
        # weights turn non-finite, its validation scores NaN, early stopping keeps the
        # best weights): so does the NumPy twin of the core, over the same buffers, from
        # here on
        runner.use_net(self.model._twin(finite_only=False))
        return runner.retry()

    def iteration_end(self, runner, loss, lr, epoch, batch, start, stop):
        # the L2 term of the weights before this update, read by the update
        self.accumulated_loss += (loss * self.scale + runner.net.l2_term) * (stop - start)

    def epoch_end(self, epoch, losses):
        est, n_samples = self.est, len(self.sample_idx)
        est.n_iter_ += 1
        est.loss_ = self.accumulated_loss / n_samples
        est.t_ += n_samples
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        early_stopping = est.early_stopping
        est._update_no_improvement_count(early_stopping, *self.validation)
        self.solver.iteration_ends(est.t_)
        if est._no_improvement_count > est.n_iter_no_change:
            if early_stopping:
                msg = ("Validation score did not improve more than tol=%f for %d "
                       "consecutive epochs." % (est.tol, est.n_iter_no_change))
            else:
                msg = ("Training loss did not improve more than tol=%f for %d "
                       "consecutive epochs." % (est.tol, est.n_iter_no_change))
            if self.solver.trigger_stopping(msg, est.verbose):
                self.stop_training = True
                return
            est._no_improvement_count = 0
        if self.incremental:
            self.stop_training = True
            return
        if est.n_iter_ == est.max_iter:
            warnings.warn(
                "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                "optimization hasn't converged yet." % est.max_iter, ConvergenceWarning)


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: the network, the solvers, prediction."""

    # ------------------------------------------------------------------ network
    def _build_model(self, layer_units, dtype):
        """A Sequential of dense layers over the core, with scikit-learn's loss reduction."""
        layers = [Dense(units, activation=self.activation) for units in layer_units[1:-1]]
        layers.append(Dense(layer_units[-1]))
        model = Sequential(layers, loss=_LOSS_OF_OUTPUT[self.out_activation_], seed=0,
                           dtype=dtype)
        model.build(layer_units[0])
        model._set_reduction("sklearn")
        return model

    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not isinstance(self, ClassifierMixin):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        model = self._model = self._build_model(layer_units, dtype)
        # a solver left by an earlier fit holds state shaped for the earlier network
        self.__dict__.pop("_optimizer", None)
        # scikit-learn's rule: Glorot uniform (factor 2 for logistic), weights then biases
        # of each layer drawn in turn from random_state
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer in model.layers:
            bound = np.sqrt(factor / (layer.n_in + layer.units))
            layer.W[...] = self._random_state.uniform(-bound, bound, (layer.n_in, layer.units))
            layer.b[...] = self._random_state.uniform(-bound, bound, layer.units)
        self.coefs_ = [layer.W for layer in model.layers]
        self.intercepts_ = [layer.b for layer in model.layers]
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _synced_model(self, dtype=None):
        """The Sequential whose flat buffer holds coefs_ and intercepts_ (which are views
        into it), rebuilt after unpickling or for another dtype; arrays the user put in
        coefs_ / intercepts_ are copied in."""
        model = self.__dict__.get("_model")
        dtype = self.coefs_[0].dtype if dtype is None else np.dtype(dtype)
        if model is None or model.dtype != dtype:
            units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            model = self._model = self._build_model(units, dtype)
        for i, layer in enumerate(model.layers):
            if self.coefs_[i] is not layer.W:
                layer.W[...] = self.coefs_[i]
            if self.intercepts_[i] is not layer.b:
                layer.b[...] = self.intercepts_[i]
        self.coefs_ = [layer.W for layer in model.layers]
        self.intercepts_ = [layer.b for layer in model.layers]
        solver = self.__dict__.get("_optimizer")
        if solver is not None and solver.state is not model.state_flat:
            model.state_flat[...] = solver.state
            solver.state = model.state_flat
        return model

    def __getstate__(self):
        # the core's network is rebuilt from coefs_, intercepts_ and the solver state
        state = super().__getstate__()
        state.pop("_model", None)
        return state

    def _targets(self, y, dtype):
        """y (n, n_outputs) as the core reads it: int64 labels for the softmax output,
        rows of `dtype` otherwise."""
        if self.out_activation_ == "softmax":
            return np.ascontiguousarray(np.argmax(y, axis=1), dtype=np.int64)
        return np.ascontiguousarray(y, dtype=dtype)

    def _data_loss_scale(self):
        # scikit-learn reports the squared error as 0.5 * the mean over outputs while its
        # gradient is that of the sum over outputs, which the core computes
        return 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0

    # -------------------------------------------------------------------- fit
    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden_layer_sizes = self.hidden_layer_sizes
        if not hasattr(hidden_layer_sizes, "__iter__"):
            hidden_layer_sizes = [hidden_layer_sizes]
        hidden_layer_sizes = list(hidden_layer_sizes)
        if np.any(np.array(hidden_layer_sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden_layer_sizes)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)

        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sp.issparse(X):
            X = X.tocsr()  # rows are taken batch by batch
        n_samples, n_features = X.shape
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [n_features] + hidden_layer_sizes + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, X.dtype)
        # float32 X trains in float32, except as scikit-learn: L-BFGS works on SciPy's
        # float64 copy of the parameters, which then stay float64, and float64
        # parameters (from it, for a warm start) make every product float64
        dtype = np.float64 if self.solver == "lbfgs" else np.result_type(
            X.dtype, self.coefs_[0].dtype)
        model = self._synced_model(dtype)
        X = X.astype(dtype, copy=False)

        # L-BFGS: the core refuses a non-finite loss or gradient, where scikit-learn's
        # weights would end non-finite and be refused just the same; sgd and adam train on
        # through one, as scikit-learn's do
        diverged = False
        try:
            with threads.blas_single_thread():  # SciPy's and scikit-learn's, inside our loop
                if self.solver in _STOCHASTIC_SOLVERS:
                    self._fit_stochastic(model, X, y, sample_weight, incremental)
                else:
                    self._fit_lbfgs(model, _dense(X), y, sample_weight)
        except FloatingPointError:
            diverged = True
        if diverged or not np.isfinite(model.params_flat).all():
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed.")
        return self

    def _fit_lbfgs(self, model, X, y, sample_weight):
        params = model.params_flat
        targets = self._targets(y, model.dtype)
        sw = None if sample_weight is None else sample_weight.astype(model.dtype)
        scale = self._data_loss_scale()

        def loss_grad(packed):
            params[...] = packed
            # the core adds the L2 penalty to the gradient and the loss, as its updates do
            loss, l2_term = model._gradient(X, targets, sw, self.alpha)
            return loss * scale + l2_term, model.grads_flat.astype(np.float64)

        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        opt_res = scipy.optimize.minimize(
            loss_grad, params.astype(np.float64), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                     **_get_additional_lbfgs_options_dict("iprint", iprint)})
        self.n_iter_ = _check_optimize_result("lbfgs", opt_res, self.max_iter)
        self.loss_ = opt_res.fun
        params[...] = opt_res.x

    def _fit_stochastic(self, model, X, y, sample_weight, incremental):
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = _StochasticSolver(self, model)
        solver = self._optimizer
        solver.attach(model, self.alpha)

        # early_stopping in partial_fit doesn't make sense
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_val = y_val = sample_weight_val = None
        X_train, y_train, sample_weight_train = X, y, sample_weight
        if early_stopping:
            # don't stratify in multilabel classification
            stratify = y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = split[:4]
            if sample_weight is not None:
                sample_weight_train, sample_weight_val = split[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if isinstance(self, ClassifierMixin):
                y_val = self._label_binarizer.inverse_transform(y_val)

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        sw = None if sample_weight_train is None else np.ascontiguousarray(
            sample_weight_train, dtype=model.dtype)
        if not sp.issparse(X_train):
            X_train = np.ascontiguousarray(X_train)
        plan = training.FitPlan(n_samples=n_samples, batch_size=batch_size,
                                epochs=self.max_iter, shuffle=self.shuffle)
        policy = _SklearnPolicy(self, model, solver, incremental, (X_val, y_val,
                                                                   sample_weight_val))
        runner = training.Runner(model, plan, policy, X_train,
                                 self._targets(y_train, model.dtype), sw)
        try:
            self.n_iter_ = 0
            runner.run()
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:  # restore the best weights
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts
            self._synced_model()

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight):
        if early_stopping:
            val_score = self._score(X, y, sample_weight=sample_weight)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            last_valid_score = self.validation_scores_[-1]
            if last_valid_score < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last_valid_score > self.best_validation_score_:
                self.best_validation_score_ = last_valid_score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
            ) -> Self:
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels in classification, real numbers in regression.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss (None: all 1).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 "%s is not stochastic." % self.solver)
        return True

    # ---------------------------------------------------------------- predict
    def _forward_pass_fast(self, X, check_input=True):
        """Output-layer activations for X, computed by the core in row chunks."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        model = self._synced_model()
        rows = _PREDICT_ROWS
        if sp.issparse(X):  # made dense chunk of rows by chunk, a few MB at a time
            X = X.tocsr()
            rows = max(1, min(rows, _DENSE_CHUNK_ELEMENTS // X.shape[1]))
        # an estimator made or unpickled in this process predicts on the team found for
        # passes of this size, not on every core of a machine that has one taken
        threads.controller(model).forward_team(min(rows, X.shape[0]))
        out = evaluation.forward_rows(model, X, None, batch_size=rows, step=rows, finite=False)
        return F.output_transform(model.loss, out)

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's ``MLPClassifier`` trained by
    minitrain's C core.

    Same parameters, defaults and meanings as
    ``sklearn.neural_network.MLPClassifier``: ``hidden_layer_sizes``, ``activation``
    ({'identity', 'logistic', 'tanh', 'relu'}), ``solver`` ({'lbfgs', 'sgd', 'adam'}),
    ``alpha`` (L2 penalty), ``batch_size`` ('auto' = min(200, n_samples)),
    ``learning_rate`` ({'constant', 'invscaling', 'adaptive'}, sgd only),
    ``learning_rate_init``, ``power_t``, ``max_iter`` (epochs for sgd/adam, iterations
    for lbfgs), ``shuffle``, ``random_state``, ``tol``, ``verbose``, ``warm_start``,
    ``momentum``, ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``,
    ``beta_1``, ``beta_2``, ``epsilon``, ``n_iter_no_change``, ``max_fun``.

    Fitted attributes as in scikit-learn: ``classes_``, ``loss_``, ``best_loss_``,
    ``loss_curve_``, ``validation_scores_``, ``best_validation_score_``, ``t_``,
    ``coefs_``, ``intercepts_``, ``n_features_in_``, ``feature_names_in_``,
    ``n_iter_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default (100,)
        The width of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default "relu"
        The activation of the hidden layers.
    solver : {"lbfgs", "sgd", "adam"}, default "adam"
        ``lbfgs``: SciPy's L-BFGS-B on full-batch gradients; ``sgd``: mini-batch SGD
        with momentum; ``adam``: mini-batch Adam.
    alpha : float >= 0, default 0.0001
        Strength of the L2 penalty on the weights (divided by the number of samples
        when added to the loss).
    batch_size : int or "auto", default "auto"
        Rows per iteration of ``sgd`` and ``adam``; ``"auto"`` is
        ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        The schedule of ``sgd``: constant, ``learning_rate_init / t ** power_t``
        (``t`` counts samples), or divided by 5 whenever two consecutive epochs fail
        to improve by `tol`.
    learning_rate_init : float > 0, default 0.001
        The initial learning rate of ``sgd`` and ``adam``.
    power_t : float, default 0.5
        The exponent of ``invscaling``.
    max_iter : int >= 1, default 200
        Epochs for ``sgd`` and ``adam``; iterations for ``lbfgs``.
    shuffle : bool, default True
        Shuffle the rows every epoch (``sgd``, ``adam``).
    random_state : int, numpy.random.RandomState or None, default None
        Drives the initialisation, the shuffling and the early-stopping split, as in
        scikit-learn (the same integer gives scikit-learn's numbers).
    tol : float, default 1e-4
        The improvement under which an epoch (or, for ``lbfgs``, an iteration)
        counts as none.
    verbose : bool, default False
        Print the loss of every epoch.
    warm_start : bool, default False
        Continue from the previous fit's weights instead of initialising anew.
    momentum : float in [0, 1], default 0.9
        The momentum of ``sgd``.
    nesterovs_momentum : bool, default True
        Nesterov's momentum for ``sgd``.
    early_stopping : bool, default False
        Hold out `validation_fraction` of the training rows and stop when their
        score has not improved by `tol` for `n_iter_no_change` epochs, keeping the
        best weights (``sgd``, ``adam``).
    validation_fraction : float in (0, 1), default 0.1
        The held-out fraction with `early_stopping`.
    beta_1 : float in [0, 1), default 0.9
        Decay rate of Adam's first-moment estimate.
    beta_2 : float in [0, 1), default 0.999
        Decay rate of Adam's second-moment estimate.
    epsilon : float > 0, default 1e-8
        Adam's denominator term.
    n_iter_no_change : int >= 1, default 10
        Epochs without an improvement of `tol` before stopping (``sgd``, ``adam``).
    max_fun : int >= 1, default 15000
        The maximum number of loss evaluations of ``lbfgs``.

    Attributes
    ----------
    classes_ : numpy.ndarray or list of numpy.ndarray
        The class labels (one array per output for multilabel targets).
    loss_ : float
        The loss at the end of training (with the L2 penalty).
    best_loss_ : float or None
        The lowest loss of an epoch (None with `early_stopping`).
    loss_curve_ : list of float
        The loss of every epoch (``sgd``, ``adam``) or iteration (``lbfgs``).
    validation_scores_ : list of float or None
        The validation score of every epoch, with `early_stopping`.
    best_validation_score_ : float or None
        The best of them.
    t_ : int
        Training samples seen.
    coefs_ : list of numpy.ndarray
        The weight matrix of each layer, of shape (in, out).
    intercepts_ : list of numpy.ndarray
        The bias vector of each layer.
    n_features_in_ : int
        The input width.
    feature_names_in_ : numpy.ndarray of str
        The column names of a DataFrame X.
    n_iter_ : int
        Epochs (or ``lbfgs`` iterations) run.
    n_layers_ : int
        Layers, input and output included.
    n_outputs_ : int
        Output width.
    out_activation_ : str
        The output activation.

    Examples
    --------
    >>> import minitrain as mt
    >>> from minitrain.sklearn import MLPClassifier
    >>> X, y = mt.load_digits()
    >>> clf = MLPClassifier(hidden_layer_sizes=(128,), random_state=0).fit(X / 16, y)
    >>> clf.predict_proba(X[:2] / 16).shape
    (2, 10)
    """

    _parameter_constraints = dict(_SkMLPClassifier._parameter_constraints)
    loss = "log_loss"  # the classifier's loss, fixed: not a parameter

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,),
                 activation: str = "relu", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000) -> None:
        _store_params(self, locals())

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # classes_ are (re)defined on a fresh fit; warm_start and partial_fit check
        # that y brings no new class
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` "
                        f"has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict using the multi-layer perceptron classifier.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
            The predicted classes (0/1 indicators for multilabel targets).
        """
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None) -> Self:
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss (None: all 1).
        classes : array-like of shape (n_classes,), default=None
            All the classes, e.g. ``np.unique(y_all)``: required on the first call,
            may be omitted afterwards.

        Returns
        -------
        self : object
            The updated estimator.
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log of the probability estimates, classes ordered as in ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
            The log of ``predict_proba``.
        """
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Probability estimates, classes ordered as in ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        y_prob : ndarray of shape (n_samples, n_classes)
            Softmax rows for several classes; two columns for two classes; one
            sigmoid per label for multilabel targets.
        """
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's ``MLPRegressor`` trained by
    minitrain's C core.

    Same parameters, defaults and meanings as ``sklearn.neural_network.MLPRegressor``;
    see MLPClassifier for the list. ``loss`` is ``'squared_error'`` (identity output)
    or ``'poisson'`` (exponential output, half Poisson deviance). Fitted attributes as
    in scikit-learn (no ``classes_``).

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default "squared_error"
        Half the squared error with an identity output, or the half Poisson deviance
        with an exponential output (for counts).
    hidden_layer_sizes : int or sequence of int, default (100,)
        The width of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default "relu"
        The activation of the hidden layers.
    solver : {"lbfgs", "sgd", "adam"}, default "adam"
        ``lbfgs``: SciPy's L-BFGS-B on full-batch gradients; ``sgd``: mini-batch SGD
        with momentum; ``adam``: mini-batch Adam.
    alpha : float >= 0, default 0.0001
        Strength of the L2 penalty on the weights (divided by the number of samples
        when added to the loss).
    batch_size : int or "auto", default "auto"
        Rows per iteration of ``sgd`` and ``adam``; ``"auto"`` is
        ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        The schedule of ``sgd``: constant, ``learning_rate_init / t ** power_t``
        (``t`` counts samples), or divided by 5 whenever two consecutive epochs fail
        to improve by `tol`.
    learning_rate_init : float > 0, default 0.001
        The initial learning rate of ``sgd`` and ``adam``.
    power_t : float, default 0.5
        The exponent of ``invscaling``.
    max_iter : int >= 1, default 200
        Epochs for ``sgd`` and ``adam``; iterations for ``lbfgs``.
    shuffle : bool, default True
        Shuffle the rows every epoch (``sgd``, ``adam``).
    random_state : int, numpy.random.RandomState or None, default None
        Drives the initialisation, the shuffling and the early-stopping split, as in
        scikit-learn (the same integer gives scikit-learn's numbers).
    tol : float, default 1e-4
        The improvement under which an epoch (or, for ``lbfgs``, an iteration)
        counts as none.
    verbose : bool, default False
        Print the loss of every epoch.
    warm_start : bool, default False
        Continue from the previous fit's weights instead of initialising anew.
    momentum : float in [0, 1], default 0.9
        The momentum of ``sgd``.
    nesterovs_momentum : bool, default True
        Nesterov's momentum for ``sgd``.
    early_stopping : bool, default False
        Hold out `validation_fraction` of the training rows and stop when their
        score has not improved by `tol` for `n_iter_no_change` epochs, keeping the
        best weights (``sgd``, ``adam``).
    validation_fraction : float in (0, 1), default 0.1
        The held-out fraction with `early_stopping`.
    beta_1 : float in [0, 1), default 0.9
        Decay rate of Adam's first-moment estimate.
    beta_2 : float in [0, 1), default 0.999
        Decay rate of Adam's second-moment estimate.
    epsilon : float > 0, default 1e-8
        Adam's denominator term.
    n_iter_no_change : int >= 1, default 10
        Epochs without an improvement of `tol` before stopping (``sgd``, ``adam``).
    max_fun : int >= 1, default 15000
        The maximum number of loss evaluations of ``lbfgs``.

    Attributes
    ----------
    loss_ : float
        The loss at the end of training (with the L2 penalty).
    best_loss_ : float or None
        The lowest loss of an epoch (None with `early_stopping`).
    loss_curve_ : list of float
        The loss of every epoch (``sgd``, ``adam``) or iteration (``lbfgs``).
    validation_scores_ : list of float or None
        The validation score of every epoch, with `early_stopping`.
    best_validation_score_ : float or None
        The best of them.
    t_ : int
        Training samples seen.
    coefs_ : list of numpy.ndarray
        The weight matrix of each layer, of shape (in, out).
    intercepts_ : list of numpy.ndarray
        The bias vector of each layer.
    n_features_in_ : int
        The input width.
    feature_names_in_ : numpy.ndarray of str
        The column names of a DataFrame X.
    n_iter_ : int
        Epochs (or ``lbfgs`` iterations) run.
    n_layers_ : int
        Layers, input and output included.
    n_outputs_ : int
        Output width.
    out_activation_ : str
        The output activation.

    Examples
    --------
    >>> import numpy as np
    >>> from minitrain.sklearn import MLPRegressor
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> reg = MLPRegressor(hidden_layer_sizes=(16,), random_state=0).fit(X, X.sum(axis=1))
    >>> reg.predict(X[:4]).shape
    (4,)
    """

    _parameter_constraints = dict(_SkMLPRegressor._parameter_constraints)

    def __init__(self, loss: str = "squared_error",
                 hidden_layer_sizes: int | Sequence[int] = (100,), activation: str = "relu",
                 *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000) -> None:
        _store_params(self, locals())

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict using the multi-layer perceptron model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predicted values.
        """
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    # scikit-learn tests the method itself here (always true), so partial_fit exists
    # for lbfgs too and then runs a full fit
    @available_if(lambda est: est._check_solver)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
                    ) -> Self:
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss (None: all 1).

        Returns
        -------
        self : object
            The updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)


try:  # skl2onnx.to_onnx(est, X[:1]) then converts these as scikit-learn's MLPs
    from ._skl2onnx import register as _register_skl2onnx
except ImportError:  # skl2onnx, an optional extra, is not installed
    pass
else:
    _register_skl2onnx(MLPClassifier, MLPRegressor)
