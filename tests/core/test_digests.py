"""The final weights of a set of fits, bit for bit: SHA-256 digests recorded once.

A change that is meant to leave every number alone (a refactoring) must keep these
digests. They depend on the GEMM micro-kernels in use (the order of roundings), so one
table per instruction set; never on the thread count. To record them again after a change
that is meant to move numbers: ``MINITRAIN_RECORD_DIGESTS=1 python tests/core/test_digests.py``.
"""

import hashlib
import os
import warnings

import numpy as np
import pytest

import minitrain as mt

_core = pytest.importorskip("minitrain._core")


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:32]


def _data(n=150, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 0.5)
    return X, y


def _net(dtype, extra=()):
    return mt.Sequential([mt.Dense(16, activation="relu"), *extra, mt.Dense(3)],
                         seed=0, dtype=dtype)


def _model_digest(model):
    return _digest(model.params_flat, model.buffers_flat, model.state_flat)


def _sequential(dtype, optimizer, extra=(), **fit):
    def run(tmp_path):
        X, y = _data()
        model = _net(dtype, extra)
        model.fit(X.astype(model.dtype), y, epochs=3, batch_size=16, optimizer=optimizer(),
                  verbose=0, **fit)
        return _model_digest(model)
    return run


def _resumed(tmp_path):
    X, y = _data()
    first = _net("float64", (mt.Dropout(0.2),))
    first.fit(X, y, epochs=2, batch_size=16, optimizer=mt.Adam(lr=0.01), verbose=0)
    first.save(tmp_path / "run.npz")
    again = _net("float64", (mt.Dropout(0.2),))
    again.fit(X, y, epochs=4, batch_size=16, verbose=0, resume_from=tmp_path / "run.npz")
    return _model_digest(again)


def _sklearn(kind, sparse=False, dtype=np.float64, **params):
    def run(tmp_path):
        sk = pytest.importorskip("minitrain.sklearn")
        import scipy.sparse as sp
        X, y = _data()
        X = X.astype(dtype)
        if kind == "regressor":
            est = sk.MLPRegressor(hidden_layer_sizes=(16,), random_state=0, **params)
            target = X[:, 0] - 2 * X[:, 1] + X[:, 2] * X[:, 3]
        else:
            est = sk.MLPClassifier(hidden_layer_sizes=(16,), random_state=0, **params)
            target = y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: few epochs on purpose
            est.fit(sp.csr_matrix(X) if sparse else X, target)
            if params.get("solver") != "lbfgs" and not params.get("early_stopping"):
                est.partial_fit(X, target)
        return _digest(*est.coefs_, *est.intercepts_, np.asarray(est.loss_curve_ if
                       hasattr(est, "loss_curve_") else [est.loss_]))
    return run


CASES = {
    "f32_sgd_momentum": _sequential("float32", lambda: mt.SGD(lr=0.05, momentum=0.9)),
    "f64_sgd_nesterov": _sequential("float64", lambda: mt.SGD(lr=0.05, momentum=0.9,
                                                              nesterov=True,
                                                              weight_decay=1e-3)),
    "f32_adam": _sequential("float32", lambda: mt.Adam(lr=0.01)),
    "f64_adam_clip_schedule": _sequential(
        "float64", lambda: mt.Adam(lr=mt.schedules.ExponentialDecay(0.01, 5, 0.9),
                                   clip_norm=1.0)),
    "f32_adamw": _sequential("float32", lambda: mt.AdamW(lr=0.01, weight_decay=0.05)),
    "f64_adamw_decay_all": _sequential("float64", lambda: mt.AdamW(lr=0.01,
                                                                   decay_all=True)),
    "f32_dropout": _sequential("float32", lambda: mt.SGD(lr=0.05), (mt.Dropout(0.3),)),
    "f64_dropout": _sequential("float64", lambda: mt.Adam(lr=0.01), (mt.Dropout(0.3),)),
    "f32_batchnorm": _sequential("float32", lambda: mt.SGD(lr=0.05, momentum=0.9),
                                 (mt.BatchNorm(),)),
    "f64_batchnorm_validation": _sequential(
        "float64", lambda: mt.Adam(lr=0.01), (mt.BatchNorm(), mt.Dropout(0.1)),
        validation_split=0.2, drop_last=True),
    "f64_no_shuffle_tol": _sequential("float64", lambda: mt.SGD(lr=0.1), shuffle=False,
                                      tol=10.0, n_iter_no_change=1),
    "f64_resumed": _resumed,
    "skl_clf_sgd": _sklearn("classifier", solver="sgd", max_iter=5, learning_rate_init=0.05),
    "skl_clf_sgd_adaptive": _sklearn("classifier", solver="sgd", max_iter=30, tol=0.5,
                                     n_iter_no_change=1, learning_rate="adaptive",
                                     learning_rate_init=0.05, batch_size=32),
    "skl_clf_adam": _sklearn("classifier", solver="adam", max_iter=5, batch_size=32),
    "skl_clf_adam_f32": _sklearn("classifier", solver="adam", max_iter=5, batch_size=32,
                                 dtype=np.float32),
    "skl_clf_adam_early": _sklearn("classifier", solver="adam", max_iter=8, batch_size=32,
                                   early_stopping=True, n_iter_no_change=2),
    "skl_clf_lbfgs": _sklearn("classifier", solver="lbfgs", max_iter=20),
    "skl_reg_sgd_invscaling": _sklearn("regressor", solver="sgd", max_iter=5,
                                       learning_rate="invscaling", learning_rate_init=0.01,
                                       momentum=0.5, nesterovs_momentum=False),
    "skl_reg_sgd_sparse": _sklearn("regressor", solver="sgd", max_iter=5, sparse=True,
                                   learning_rate_init=0.01, alpha=0.01),
    "skl_reg_adam": _sklearn("regressor", solver="adam", max_iter=5, batch_size=40,
                             alpha=0.1),
    "skl_reg_lbfgs": _sklearn("regressor", solver="lbfgs", max_iter=20),
}

DIGESTS = {'avx2': {'f32_adam': '124d004d37f98c3b2516898d1b7b10b5',
          'f32_adamw': 'a6975d396632f8fd62436ea314ca5325',
          'f32_batchnorm': '4311bf56e2acdafbeb0a1116e7fa30d7',
          'f32_dropout': '434c50e94518f9c0771921f59f5e3f82',
          'f32_sgd_momentum': '105dfe089eb1638a47f09c95f8931b0d',
          'f64_adam_clip_schedule': 'a4f7f72e570a903576b21bfc7d39bbb2',
          'f64_adamw_decay_all': 'cd80941432a03a6d4468a4a49263e181',
          'f64_batchnorm_validation': '238f055b265576df483c52e0d884dd3a',
          'f64_dropout': 'e32c8234a1adfc1b91504c1883dde506',
          'f64_no_shuffle_tol': 'c356453a30e9b77008b532b9f0eb91a0',
          'f64_resumed': 'c78cb7868a8f2b594f9e466fe3c4096d',
          'f64_sgd_nesterov': 'b28366ca6470e930e1b07d62d960e726',
          'skl_clf_adam': '0d0b4958809b2bf16e6eaf116756e440',
          'skl_clf_adam_early': '58ded026e5d3bfa15f8dab14238db3ac',
          'skl_clf_adam_f32': '8628482b598521d818aea64a37c8c96d',
          'skl_clf_lbfgs': '947813bb56d6cc69e91e84389dae5f58',
          'skl_clf_sgd': '64a3436f0717c461c87be27c57106fc9',
          'skl_clf_sgd_adaptive': '883f39e3d5bcb387f1c8893f3c392130',
          'skl_reg_adam': 'a8e86018fee8b5e0cb4cca0fd991bd92',
          'skl_reg_lbfgs': '33e348ab801c224961b547868c999fad',
          'skl_reg_sgd_invscaling': 'e7f30501faffcc5ae7d0781cd2383d20',
          'skl_reg_sgd_sparse': '66ddd449980a0238e576912804554fd9'},
 'avx512': {'f32_adam': '124d004d37f98c3b2516898d1b7b10b5',
            'f32_adamw': 'a6975d396632f8fd62436ea314ca5325',
            'f32_batchnorm': '4311bf56e2acdafbeb0a1116e7fa30d7',
            'f32_dropout': '434c50e94518f9c0771921f59f5e3f82',
            'f32_sgd_momentum': '105dfe089eb1638a47f09c95f8931b0d',
            'f64_adam_clip_schedule': 'a4f7f72e570a903576b21bfc7d39bbb2',
            'f64_adamw_decay_all': 'cd80941432a03a6d4468a4a49263e181',
            'f64_batchnorm_validation': '238f055b265576df483c52e0d884dd3a',
            'f64_dropout': 'e32c8234a1adfc1b91504c1883dde506',
            'f64_no_shuffle_tol': 'c356453a30e9b77008b532b9f0eb91a0',
            'f64_resumed': 'c78cb7868a8f2b594f9e466fe3c4096d',
            'f64_sgd_nesterov': 'b28366ca6470e930e1b07d62d960e726',
            'skl_clf_adam': '0d0b4958809b2bf16e6eaf116756e440',
            'skl_clf_adam_early': '58ded026e5d3bfa15f8dab14238db3ac',
            'skl_clf_adam_f32': '8628482b598521d818aea64a37c8c96d',
            'skl_clf_lbfgs': '947813bb56d6cc69e91e84389dae5f58',
            'skl_clf_sgd': '64a3436f0717c461c87be27c57106fc9',
            'skl_clf_sgd_adaptive': '883f39e3d5bcb387f1c8893f3c392130',
            'skl_reg_adam': 'a8e86018fee8b5e0cb4cca0fd991bd92',
            'skl_reg_lbfgs': '33e348ab801c224961b547868c999fad',
            'skl_reg_sgd_invscaling': 'e7f30501faffcc5ae7d0781cd2383d20',
            'skl_reg_sgd_sparse': '66ddd449980a0238e576912804554fd9'},
 'generic': {'f32_adam': 'fb5f0cc155b4f0fc92ac49248fc6739f',
             'f32_adamw': '7b0ac3d6af023f808e690c9589d8962c',
             'f32_batchnorm': 'c7988a4e876a93bd532d1f7b8a721c3d',
             'f32_dropout': 'e18be69169c45d9db7c46cfb35814823',
             'f32_sgd_momentum': '6e66c5c4f3822f8d1a1d884b81a513f2',
             'f64_adam_clip_schedule': 'b5b5c937409a1540c6e5517de1de3037',
             'f64_adamw_decay_all': 'e627dc3bed36d32ec0c85d12d9527818',
             'f64_batchnorm_validation': '8a675dde90853ce1d1f409cbb04dbe5f',
             'f64_dropout': 'a362410994db2a80d2d7d6b33de63fbd',
             'f64_no_shuffle_tol': '73f99804b71dd663639225a21a6afdc8',
             'f64_resumed': '14b583f155989ae80769003a4da13d6b',
             'f64_sgd_nesterov': 'f534b16d5b4835e59b927aaf051143af',
             'skl_clf_adam': '256f36279c2b392cab4a523637452ed4',
             'skl_clf_adam_early': '2e271da85fd0562420e5bfad3cea1cf7',
             'skl_clf_adam_f32': '56d7ee975fe67b3b383d22edaf496bce',
             'skl_clf_lbfgs': '5a5f1c3779437a0c29d3d5a98c179c57',
             'skl_clf_sgd': '2e09f5a95170a5971324dd0ca566cbd1',
             'skl_clf_sgd_adaptive': '2cc157fd2f30b18b3f71bae944e5b1d0',
             'skl_reg_adam': '133c512fa43db95c38a944a005caa03a',
             'skl_reg_lbfgs': 'dd4975f7cdf7a38cd5cedf90cda00d51',
             'skl_reg_sgd_invscaling': '9f9b47ddc9c84b0143edaec99a63641a',
             'skl_reg_sgd_sparse': '23c7ca726f838dd0d67ee8b12336909a'}}
# AVX512_BF16 adds only the bfloat16 products: float32 and float64 run the AVX-512F kernels
DIGESTS["avx512_bf16"] = DIGESTS["avx512"]

# mixed_bfloat16 rounds the same way on every instruction set (csrc/gemm_bf16.c): one table
# for all, which also checks that every ISA gives these bits
BF16_CASES = {
    "bf16_sgd_momentum": _sequential("mixed_bfloat16", lambda: mt.SGD(lr=0.05, momentum=0.9)),
    "bf16_adam_batchnorm_dropout": _sequential(
        "mixed_bfloat16", lambda: mt.Adam(lr=0.01), (mt.BatchNorm(), mt.Dropout(0.1))),
    "bf16_tanh_sigmoid_gelu": _sequential(
        "mixed_bfloat16", lambda: mt.Adam(lr=0.01),
        (mt.Dense(16, activation="tanh"), mt.Dense(16, activation="sigmoid"),
         mt.Dense(16, activation="gelu"), mt.Dense(16, activation="leaky_relu"))),
}
BF16_DIGESTS = {'bf16_adam_batchnorm_dropout': '5cec7d2c2c3e926fd2be45ebdee6aeef',
                'bf16_sgd_momentum': '1444a5d62aef16ff2461ebdd6d09daca',
                'bf16_tanh_sigmoid_gelu': 'cc85b84ad885efe20cedbf9de05787d2'}


@pytest.mark.parametrize("case", sorted(CASES))
def test_final_weights_unchanged(case, isa, threads, tmp_path):
    if isa not in DIGESTS:
        pytest.skip(f"no digests recorded for the {isa} micro-kernels")
    assert CASES[case](tmp_path) == DIGESTS[isa][case]


@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_mixed_bfloat16_weights_unchanged_and_the_same_on_every_isa(case, isa, threads,
                                                                     tmp_path):
    assert BF16_CASES[case](tmp_path) == BF16_DIGESTS[case]


def _record():
    import pprint
    import tempfile
    table = {}
    previous = _core.isa()
    for isa in _core.available_isas():
        _core.set_isa(isa)
        with tempfile.TemporaryDirectory() as tmp:
            from pathlib import Path
            table[isa] = {case: CASES[case](Path(tmp)) for case in sorted(CASES)}
        with tempfile.TemporaryDirectory() as tmp:
            from pathlib import Path
            bf16 = {case: BF16_CASES[case](Path(tmp)) for case in sorted(BF16_CASES)}
        print(isa, "mixed_bfloat16:", bf16)
    _core.set_isa(previous)
    pprint.pprint(table, width=100)


if __name__ == "__main__" and os.environ.get("MINITRAIN_RECORD_DIGESTS"):
    _record()
