"""Two small non-CNN models for parameter vulnerability studies, with data made in code.

- :class:`TinyDLRM`: a DLRM-like click-through-rate model (embedding tables for categorical
  features, a bottom MLP for dense features, pairwise dot-product interaction, a top MLP, a
  sigmoid CTR out), trained on :func:`click_data`: synthetic clicks drawn from a seeded logistic
  ground truth (per-category latent vectors and biases, Zipf-distributed category frequencies).
- :class:`DigitsTransformer`: a 2-layer ``nn.TransformerEncoder`` classifier (d_model 32, 4
  heads) that reads the 8 rows of a digits image as 8 tokens; ``[B, 1, 8, 8]`` in, ``[B, 10]`` out.

Both train deterministically in seconds on one thread; tiny checkpoints ship in
``resil/models/checkpoints`` (``synthetic-dlrm.pt``, ``synthetic-transformer.pt``, metrics in
``synthetic.json``) and load offline with :func:`load`. ``python -m resil.models.synthetic``
retrains and rewrites them.

The DLRM takes ONE packed float tensor ``[B, n_dense + n_sparse]``: the dense features, then
the category indices stored as floats (exact below 2^24), so that it fits resil's single-input
machinery (``resil.sites(model, x)``, :class:`~resil.campaign.suffix.SuffixForward`); use
:meth:`ClickData.packed` or :func:`pack`.

Example:
    >>> from resil.models import synthetic
    >>> d = synthetic.click_data(n=1000, seed=0)
    >>> tuple(d.x_test.shape), d.n_dense, d.cardinalities
    ((200, 8), 4, (100, 50, 20, 10))
    >>> net = synthetic.load("synthetic-dlrm")
    >>> ctr = net(d.x_test)
    >>> tuple(ctr.shape), bool(((ctr > 0) & (ctr < 1)).all())
    ((200,), True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resil.training.recipe import Recipe, accuracy, train

CHECKPOINTS = Path(__file__).parent / "checkpoints"
METRICS = CHECKPOINTS / "synthetic.json"


# --------------------------------------------------------------------------- click data


@dataclass(frozen=True)
class ClickData:
    """Synthetic click data: packed inputs ``x`` (dense features then category indices as
    floats), click labels ``y`` (0./1.) and the ground-truth click probability ``p``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    p_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    p_test: torch.Tensor
    n_dense: int
    cardinalities: tuple[int, ...]


def pack(dense: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
    """One float tensor ``[B, n_dense + n_sparse]`` from dense features and category indices.

    Example:
        >>> pack(torch.zeros(2, 3), torch.tensor([[1, 2], [3, 4]])).tolist()[1]
        [0.0, 0.0, 0.0, 3.0, 4.0]
    """
    if dense.dim() != 2 or categories.dim() != 2 or len(dense) != len(categories):
        raise ValueError(f"dense [B, n_dense] and categories [B, n_sparse] must share B, "
                         f"got {tuple(dense.shape)}, {tuple(categories.shape)}")
    return torch.cat([dense.float(), categories.float()], 1)


def click_data(
    n: int = 60_000,
    seed: int = 0,
    cardinalities: tuple[int, ...] = (100, 50, 20, 10),
    n_dense: int = 4,
    latent: int = 4,
    test_fraction: float = 0.2,
) -> ClickData:
    """Synthetic CTR data from a logistic ground truth, fully determined by ``seed``.

    Categories of feature f follow a Zipf-like law (P(k) proportional to 1 / (k + 1)^1.1, as
    real categorical traffic is skewed). Each category k of feature f has a latent vector
    ``V_f[k]`` and a bias ``a_f[k]``; the dense features ``d ~ N(0, I)`` have weights ``w`` and a
    projection ``P`` into the latent space. The click logit is
    ``-1 + d.w + sum_f a_f[c_f] + sum_{f<g} V_f[c_f].V_g[c_g] + (d P).sum_f V_f[c_f]``
    and the label is a Bernoulli draw of its sigmoid.

    Args:
        n: number of samples (train + test).
        seed: random seed.
        cardinalities: number of categories of each categorical feature.
        n_dense: number of dense features.
        latent: ground-truth latent dimension.
        test_fraction: share of the samples in the test split (the last ones).
    """
    if n < 10 or not cardinalities or min(cardinalities) < 1 or n_dense < 1 or not 0 < test_fraction < 1:
        raise ValueError("click_data needs n >= 10, cardinalities >= 1, n_dense >= 1 and 0 < test_fraction < 1")
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, n_dense))
    cats = np.stack([rng.choice(c, n, p=_zipf(c)) for c in cardinalities], 1)
    w = rng.normal(0, 0.5, n_dense)
    proj = rng.normal(0, 0.3, (n_dense, latent))
    vecs = [rng.normal(0, 0.5, (c, latent)) for c in cardinalities]
    biases = [rng.normal(0, 0.5, c) for c in cardinalities]
    chosen = [v[cats[:, f]] for f, v in enumerate(vecs)]
    logit = -1.0 + dense @ w + sum(b[cats[:, f]] for f, b in enumerate(biases))
    for f in range(len(chosen)):
        for g in range(f + 1, len(chosen)):
            logit = logit + (chosen[f] * chosen[g]).sum(1)
    logit = logit + ((dense @ proj) * sum(chosen)).sum(1)
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.float32)
    x = pack(torch.from_numpy(dense), torch.from_numpy(cats))
    k = n - round(n * test_fraction)
    yt, pt = torch.from_numpy(y), torch.from_numpy(p.astype(np.float32))
    return ClickData(x[:k], yt[:k], pt[:k], x[k:], yt[k:], pt[k:], n_dense, tuple(int(c) for c in cardinalities))


def _zipf(c: int, s: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, c + 1) ** s
    return w / w.sum()


class TinyDLRM(nn.Module):
    """DLRM-like CTR model: ``emb.<f>`` tables, ``bottom`` MLP, pairwise dot products, ``top`` MLP.

    Input: the packed tensor ``[B, n_dense + len(cardinalities)]`` (see :func:`pack`);
    output: the click probability ``[B]``. The top MLP sees the bottom MLP's output concatenated
    with the dot products of every pair among {bottom output, embedding vectors}, as in DLRM.
    """

    pairs: torch.Tensor

    def __init__(self, cardinalities: tuple[int, ...] = (100, 50, 20, 10), n_dense: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.n_dense = n_dense
        self.emb = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.bottom = nn.Sequential(nn.Linear(n_dense, 16), nn.ReLU(), nn.Linear(16, dim), nn.ReLU())
        vectors = len(cardinalities) + 1
        rows, cols = torch.triu_indices(vectors, vectors, 1)
        self.register_buffer("pairs", torch.stack([rows, cols]), persistent=False)
        self.top = nn.Sequential(nn.Linear(dim + len(rows), 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense, idx = x[:, : self.n_dense], x[:, self.n_dense :].long()
        z = self.bottom(dense)
        vecs = torch.stack([z] + [e(idx[:, f]) for f, e in enumerate(self.emb)], 1)
        dots = torch.bmm(vecs, vecs.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return torch.sigmoid(self.top(torch.cat([z, dots], 1))).squeeze(1)


#: the recipe of the shipped :class:`TinyDLRM` checkpoint
DLRM_RECIPE = Recipe(epochs=12, lr=3e-3, batch_size=256)
#: the recipe of the shipped :class:`DigitsTransformer` checkpoint
TRANSFORMER_RECIPE = Recipe(epochs=20, lr=3e-3, batch_size=64)


def train_dlrm(data: ClickData, recipe: Recipe = DLRM_RECIPE) -> TinyDLRM:
    """Train :class:`TinyDLRM` on ``data`` with Adam and binary cross-entropy (seeded); eval mode."""
    torch.manual_seed(recipe.seed)
    model = TinyDLRM(data.cardinalities, data.n_dense)
    bce = nn.BCELoss()
    train(model, data, recipe, loss=lambda x, y: bce(model(x), y))  # type: ignore[arg-type]  # ClickData has x_train/y_train
    return model.eval()


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (scikit-learn's ``roc_auc_score``) of click scores against 0/1 labels.

    Example:
        >>> auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), scores.detach().double().numpy()))


# --------------------------------------------------------------------------- transformer


class DigitsTransformer(nn.Module):
    """A small transformer encoder classifier for 8x8 digits: each image row is a token.

    ``embed`` (Linear 8 -> d_model) plus a learned position embedding ``pos`` (nn.Embedding),
    ``encoder`` (``layers`` x nn.TransformerEncoderLayer, batch_first, ReLU, no dropout),
    mean pooling over tokens, ``norm`` (LayerNorm) and ``head`` (Linear d_model -> 10).
    """

    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 2, ff: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.pos = nn.Embedding(8, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)
        self.register_buffer("positions", torch.arange(8), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(len(x), 8, 8)) + self.pos(self.positions)
        return self.head(self.norm(self.encoder(tokens).mean(1)))


def train_transformer(recipe: Recipe = TRANSFORMER_RECIPE) -> DigitsTransformer:
    """Train :class:`DigitsTransformer` on the digits train split (seeded); eval mode."""
    from . import dataset

    torch.manual_seed(recipe.seed)
    return train(DigitsTransformer(), dataset("digits"), recipe)  # type: ignore[return-value]


# --------------------------------------------------------------------------- checkpoints


def _dlrm_metric(model: nn.Module) -> float:
    d = click_data()
    with torch.no_grad():
        return auc(model(d.x_test), d.y_test)


def _transformer_metric(model: nn.Module) -> float:
    from . import dataset

    d = dataset("digits")
    return accuracy(model, d.x_test, d.y_test)


#: name -> (build an untrained model, train it, its metric on the test split, metric name)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], Callable[[nn.Module], float], str]] = {
    "synthetic-dlrm": (TinyDLRM, lambda: train_dlrm(click_data()), _dlrm_metric, "test AUC"),
    "synthetic-transformer": (DigitsTransformer, train_transformer, _transformer_metric, "test accuracy"),
}


def names() -> list[str]:
    """Names of the synthetic-study models."""
    return list(MODELS)


def load(name: str) -> nn.Module:
    """The trained model ``name`` from its shipped checkpoint, in eval mode, on the CPU.

    Raises:
        KeyError: for an unknown name (listing the known ones).
    """
    if name not in MODELS:
        raise KeyError(f"no synthetic model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name][0]()
    model.load_state_dict(torch.load(CHECKPOINTS / f"{name}.pt", map_location="cpu", weights_only=True))
    return model.eval()


def metric(name: str) -> float:
    """The metric recorded when the checkpoint of ``name`` was trained (AUC or accuracy)."""
    return float(json.loads(METRICS.read_text())[name])


def evaluate(name: str, model: nn.Module) -> float:
    """The metric of ``model`` as recorded for ``name`` (test AUC for the DLRM, accuracy otherwise)."""
    return MODELS[name][2](model)


def build_checkpoints(selected: list[str] | None = None) -> dict[str, float]:
    """Retrain (one thread, seeded) and save the checkpoints; returns their metrics."""
    torch.set_num_threads(1)
    recorded = json.loads(METRICS.read_text()) if METRICS.exists() else {}
    for name in selected or names():
        model = MODELS[name][1]()
        torch.save(model.state_dict(), CHECKPOINTS / f"{name}.pt")
        value = evaluate(name, load(name))
        if not math.isclose(value, evaluate(name, model), rel_tol=0, abs_tol=0):
            raise RuntimeError(f"{name}: the saved checkpoint does not reproduce the trained model")
        recorded[name] = value
        METRICS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return recorded


__all__ = [
    "ClickData", "DigitsTransformer", "TinyDLRM", "auc", "build_checkpoints", "click_data", "evaluate", "load", "metric", "names",
    "pack", "train_dlrm", "train_transformer",
]

if __name__ == "__main__":
    import sys

    for _name, _value in build_checkpoints(sys.argv[1:] or None).items():
        print(f"{_name:24s} {MODELS[_name][3]} {_value:.4f}")
