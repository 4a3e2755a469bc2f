"""The peers: the same MLP training written with minitrain and with each other library.

Every peer trains exactly the same model — Dense layers with ReLU, a linear last layer,
softmax cross-entropy (mean over the batch), SGD in PyTorch's momentum form
``buf = momentum*buf + g; p -= lr*buf`` — from the same initial weights (minitrain's
He/Glorot-uniform draw, copied into every peer), in float32, and visits the rows in
the same order: epoch ``e`` uses ``numpy.random.default_rng(seed).permutation(n)``,
which is the order ``minitrain.Sequential.fit(..., seed=seed)`` draws.

A peer is a small class: ``modules`` names what it needs (a peer whose modules do not
import is reported as missing, never dropped), ``set_threads`` pins its library's
thread pool, ``trainer`` returns an object with

- ``step(X, y)``: one iteration (forward, backward, update) on the batch X, y, finished
  when it returns;
- ``epoch(X, y, batch_size, seed)``: one epoch, shuffling included;
- ``predict(X)``: class labels;
- ``weights()``: the current ``[(W (in, out), b (out,)), ...]`` as NumPy arrays.

To add a peer, subclass Peer (or a sibling peer) and append it to PEERS.
"""

import importlib
import importlib.util

import numpy as np


def initial_weights(widths, seed=0):
    """minitrain's initial ``[(W, b), ...]`` for the layer widths (in, h1, ..., out)."""
    import minitrain as mt

    model = _minitrain_model(mt, widths, seed, "numpy")
    return [(layer.W.copy(), layer.b.copy()) for layer in model.layers]


def _minitrain_model(mt, widths, seed, backend, dtype="float32"):
    layers = [mt.Dense(w, activation="relu") for w in widths[1:-1]] + [mt.Dense(widths[-1])]
    model = mt.Sequential(layers, loss="cross_entropy", seed=seed, dtype=dtype,
                          backend=backend)
    return model.build(widths[0])


def epoch_order(n, seed):
    """The row order of an epoch: the permutation minitrain's fit draws for `seed`."""
    return np.random.default_rng(seed).permutation(n)


class Peer:
    """One library's way of training the benchmark model."""

    name = ""          # key in the results
    label = ""         # what the report calls it
    modules = ()       # import names; a peer whose modules do not import is missing
    distributions = () # package names whose versions the report lists

    @classmethod
    def missing(cls):
        """None when the peer can run, else why not (checked without importing)."""
        for module in cls.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError as err:  # a parent package is missing or broken
                return f"{module} is not importable ({err})"
            if not found:
                return f"{module} is not installed"
        return None

    def set_threads(self, n):
        """Pin the library's own thread pool to n threads (called once, before use)."""

    def trainer(self, weights, lr, momentum):
        raise NotImplementedError


class MinitrainPeer(Peer):
    name = "minitrain"
    label = "minitrain (C)"
    modules = ("minitrain",)
    distributions = ("minitrain",)
    backend = "c"
    dtype = "float32"

    def set_threads(self, n):
        import minitrain as mt

        mt.set_num_threads(n)

    def trainer(self, weights, lr, momentum):
        return MinitrainTrainer(self.backend, weights, lr, momentum, self.dtype)


class MinitrainBfloat16Peer(MinitrainPeer):
    name = "minitrain-bf16"
    label = "minitrain (C), mixed_bfloat16"
    dtype = "mixed_bfloat16"


class MinitrainNumpyPeer(MinitrainPeer):
    name = "minitrain-numpy"
    label = "minitrain NumPy backend"
    backend = "numpy"


class MinitrainTrainer:
    def __init__(self, backend, weights, lr, momentum, dtype="float32"):
        import minitrain as mt

        widths = [weights[0][0].shape[0]] + [W.shape[1] for W, _ in weights]
        self.model = _minitrain_model(mt, widths, 0, backend, dtype)
        for layer, (W, b) in zip(self.model.layers, weights):
            layer.W[...] = W
            layer.b[...] = b
        self.optimizer = mt.SGD(lr=lr, momentum=momentum)

    def step(self, X, y):
        self.model.train_step(X, y, optimizer=self.optimizer)

    def epoch(self, X, y, batch_size, seed):
        self.model.fit(X, y, epochs=1, batch_size=batch_size, optimizer=self.optimizer,
                       seed=seed, verbose=0)

    def predict(self, X):
        return self.model.predict(X)

    def weights(self):
        return [(layer.W.copy(), layer.b.copy()) for layer in self.model.layers]


class TorchPeer(Peer):
    name = "torch"
    label = "PyTorch eager, manual batching"
    modules = ("torch",)
    distributions = ("torch",)

    def set_threads(self, n):
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only possible before the first parallel work
            pass

    def trainer(self, weights, lr, momentum):
        return TorchTrainer(weights, lr, momentum)


class TorchAutocastPeer(TorchPeer):
    name = "torch-bf16"
    label = "PyTorch eager, autocast bfloat16"

    def trainer(self, weights, lr, momentum):
        return TorchAutocastTrainer(weights, lr, momentum)


class TorchDataLoaderPeer(TorchPeer):
    name = "torch-dataloader"
    label = "PyTorch eager, DataLoader"

    def trainer(self, weights, lr, momentum):
        return TorchDataLoaderTrainer(weights, lr, momentum)


class TorchTrainer:
    def __init__(self, weights, lr, momentum):
        import torch

        self.torch = torch
        layers = []
        for W, b in weights:
            linear = torch.nn.Linear(*W.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W.T.copy()))  # torch stores (out, in)
                linear.bias.copy_(torch.from_numpy(b))
            layers += [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def _step(self, xb, yb):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()

    def step(self, X, y):
        self._step(self.torch.from_numpy(X), self.torch.from_numpy(y))

    def epoch(self, X, y, batch_size, seed):
        order = self.torch.from_numpy(epoch_order(len(X), seed))
        Xt, yt = self.torch.from_numpy(X), self.torch.from_numpy(y)
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            self._step(Xt[rows], yt[rows])

    def predict(self, X):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(X)).argmax(dim=1).numpy()

    def weights(self):
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(l.weight.detach().numpy().T.copy(), l.bias.detach().numpy().copy())
                for l in linears]


class TorchAutocastTrainer(TorchTrainer):
    """Mixed precision as PyTorch users write it on a CPU: the forward pass (and so the
    products of backward) under torch.autocast("cpu", dtype=torch.bfloat16); float32
    parameters, optimizer and loss."""

    def _step(self, xb, yb):
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.model(xb)
        loss = torch.nn.functional.cross_entropy(logits.float(), yb)
        loss.backward()
        self.optimizer.step()

    def predict(self, X):
        with self.torch.no_grad(), self.torch.autocast("cpu", dtype=self.torch.bfloat16):
            return self.model(self.torch.from_numpy(X)).argmax(dim=1).numpy()


class TorchDataLoaderTrainer(TorchTrainer):
    """What most PyTorch code does: batches come out of a DataLoader over a
    TensorDataset (rows fetched one by one and collated), in the shared order."""

    def __init__(self, weights, lr, momentum):
        super().__init__(weights, lr, momentum)
        self._batch = (None, None)  # (X, a DataLoader over it) of the last step

    def _loader(self, X, y, batch_size, order):
        from torch.utils.data import DataLoader, TensorDataset

        dataset = TensorDataset(self.torch.from_numpy(X), self.torch.from_numpy(y))
        return DataLoader(dataset, batch_size=batch_size, sampler=order)

    def step(self, X, y):
        # one iteration = the batch fetched through a DataLoader (rows indexed one by
        # one, then collated) + the step; the loader is built once per batch array
        if self._batch[0] is not X:
            self._batch = (X, self._loader(X, y, len(X), range(len(X))))
        for xb, yb in self._batch[1]:
            self._step(xb, yb)

    def epoch(self, X, y, batch_size, seed):
        for xb, yb in self._loader(X, y, batch_size, epoch_order(len(X), seed).tolist()):
            self._step(xb, yb)


class JaxPeer(Peer):
    name = "jax"
    label = "JAX, jax.jit on the step"
    modules = ("jax", "jaxlib")
    distributions = ("jax", "jaxlib")

    def __init__(self):
        self._compiled = None

    def trainer(self, weights, lr, momentum):
        # the jitted functions are built once per peer, so fresh trainers (one per
        # time-to-accuracy run) reuse the compiled code as a long-running program would
        if self._compiled is None:
            self._compiled = _jax_functions()
        return JaxTrainer(self._compiled, weights, lr, momentum)


def _jax_functions():
    import jax
    import jax.numpy as jnp

    def forward(params, x):
        for W, b in params[:-1]:
            x = jax.nn.relu(x @ W + b)
        W, b = params[-1]
        return x @ W + b

    def loss_fn(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def step(params, bufs, x, y, lr, momentum):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        bufs = jax.tree_util.tree_map(lambda buf, g: momentum * buf + g, bufs, grads)
        params = jax.tree_util.tree_map(lambda p, buf: p - lr * buf, params, bufs)
        return params, bufs, loss

    return (jax.jit(step, donate_argnums=(0, 1)),
            jax.jit(lambda params, x: jnp.argmax(forward(params, x), axis=1)))


class JaxTrainer:
    def __init__(self, compiled, weights, lr, momentum):
        import jax.numpy as jnp

        self._step, self._predict = compiled
        self.params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]
        self.bufs = [(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in self.params]
        self.lr, self.momentum = np.float32(lr), np.float32(momentum)

    def _run(self, X, y):
        # numpy batches go straight into the jitted step; JAX dispatches asynchronously
        self.params, self.bufs, loss = self._step(self.params, self.bufs, X, y, self.lr,
                                                  self.momentum)
        return loss

    def step(self, X, y):
        self._run(X, y.astype(np.int32)).block_until_ready()

    def epoch(self, X, y, batch_size, seed):
        order = epoch_order(len(X), seed)
        y32 = y.astype(np.int32)  # JAX's default integer width
        loss = None
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            loss = self._run(X[rows], y32[rows])
        loss.block_until_ready()

    def predict(self, X):
        return np.asarray(self._predict(self.params, X))

    def weights(self):
        return [(np.asarray(W), np.asarray(b)) for W, b in self.params]


class SklearnPeer(Peer):
    name = "sklearn"
    label = "scikit-learn MLPClassifier"
    modules = ("sklearn",)
    distributions = ("scikit-learn",)

    def estimator_class(self):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier

    def trainer(self, weights, lr, momentum):
        return SklearnTrainer(self.estimator_class(), weights, lr, momentum)


class MinitrainSklearnPeer(SklearnPeer):
    name = "minitrain-sklearn"
    label = "minitrain.sklearn MLPClassifier"
    modules = ("minitrain.sklearn",)
    distributions = ("minitrain",)

    def estimator_class(self):
        from minitrain.sklearn import MLPClassifier

        return MLPClassifier


class SklearnTrainer:
    """An MLPClassifier driven by partial_fit: one call is one pass over the rows it is
    given in the given order (shuffle=False), keeping the momentum across calls.
    scikit-learn's momentum form ``v = mu*v - lr*g; p += v`` is PyTorch's with v = -lr*buf."""

    def __init__(self, estimator_class, weights, lr, momentum):
        hidden = tuple(W.shape[1] for W, _ in weights[:-1])
        n_in, n_out = weights[0][0].shape[0], weights[-1][0].shape[1]
        self.clf = estimator_class(
            hidden_layer_sizes=hidden, activation="relu", solver="sgd", alpha=0.0,
            batch_size=1, learning_rate="constant", learning_rate_init=lr,
            momentum=momentum, nesterovs_momentum=False, shuffle=False, random_state=0)
        # one partial_fit creates the coefficient arrays; they are then overwritten with
        # the shared initial weights and the optimizer (its velocities) dropped
        self.clf.partial_fit(np.zeros((1, n_in), np.float32), np.zeros(1, np.int64),
                             classes=np.arange(n_out))
        for coef, intercept, (W, b) in zip(self.clf.coefs_, self.clf.intercepts_, weights):
            coef[...] = W
            intercept[...] = b
        del self.clf._optimizer

    def step(self, X, y):
        self.clf.batch_size = len(X)
        self.clf.partial_fit(X, y)

    def epoch(self, X, y, batch_size, seed):
        order = epoch_order(len(X), seed)
        self.clf.batch_size = batch_size
        self.clf.partial_fit(X[order], y[order])

    def predict(self, X):
        return self.clf.predict(X)

    def weights(self):
        return [(W.copy(), b.copy()) for W, b in zip(self.clf.coefs_, self.clf.intercepts_)]


PEERS = [MinitrainPeer, MinitrainNumpyPeer, TorchPeer, TorchDataLoaderPeer, JaxPeer,
         SklearnPeer, MinitrainSklearnPeer, MinitrainBfloat16Peer, TorchAutocastPeer]
REFERENCE = "minitrain"


def peer_classes(names=None):
    """The peer classes by name, in PEERS order (all of them when names is None)."""
    known = {cls.name: cls for cls in PEERS}
    if names is None:
        return list(PEERS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {sorted(known)}")
    return [cls for cls in PEERS if cls.name in names]


def versions(classes):
    """Installed versions of the peers' packages and of numpy."""
    from importlib import metadata

    out = {}
    for dist in ["numpy", *[d for cls in classes for d in cls.distributions]]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def load(cls):
    """An instance of the peer with its modules imported (ImportError if they fail)."""
    for module in cls.modules:
        importlib.import_module(module)
    return cls()
