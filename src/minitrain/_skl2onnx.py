"""skl2onnx converts minitrain.sklearn's MLPs with the converters of scikit-learn's.

The estimators carry the attributes those converters read (``coefs_``,
``intercepts_``, ``n_layers_``, ``activation``, ``out_activation_``, ``classes_``,
``_label_binarizer``), so ``skl2onnx.to_onnx(est, X[:1])`` gives the graph, outputs and
options (``zipmap``, ``nocl``, ``output_class_labels``) it gives for scikit-learn's
estimators, limitations included (no ``loss="poisson"``, float64 only with
``zipmap=False``). ``minitrain.sklearn`` calls :func:`register` on import when skl2onnx
is installed.
"""

from skl2onnx import get_model_alias, update_registered_converter
from skl2onnx.common._registration import get_converter
from skl2onnx.operator_converters.multilayer_perceptron import (
    convert_sklearn_mlp_classifier,
    convert_sklearn_mlp_regressor,
)
from skl2onnx.shape_calculators.linear_classifier import (
    calculate_linear_classifier_output_shapes,
)
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor


def register(classifier, regressor):
    """Register the classes `classifier` and `regressor` with skl2onnx as scikit-learn's
    MLPClassifier and MLPRegressor are registered."""
    for est, sk_est, shapes, convert in (
            (classifier, _SkMLPClassifier, calculate_linear_classifier_output_shapes,
             convert_sklearn_mlp_classifier),
            (regressor, _SkMLPRegressor, calculate_linear_regressor_output_shapes,
             convert_sklearn_mlp_regressor)):
        # the options scikit-learn's estimator accepts, read back so they stay the same
        options = get_converter(get_model_alias(sk_est)).get_allowed_options()
        update_registered_converter(est, f"Minitrain{sk_est.__name__}", shapes, convert,
                                    options=options)
