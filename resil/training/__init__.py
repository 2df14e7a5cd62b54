"""Hardening: fault-tolerant and fault-aware training, fault-tolerant architecture search.

Fault-tolerant training (FTT) from FT-NAS, with the fault processes of :mod:`resil.training.ftnas`
(:class:`~resil.training.ftnas.MiBB`, :class:`~resil.training.ftnas.IBB`, :class:`~resil.training.ftnas.AdSAF`) redrawn on
every forward pass with straight-through gradients:

- :func:`prepare` / :class:`FTT`: use it from your own training loop (``ftt.loss(x, y)``), then
  :meth:`FTT.convert` (or :func:`convert`) returns the plain model;
- :func:`train_ftt`: a training recipe (:class:`resil.training.recipe.Recipe`) with the FTT loss;
- :func:`faulty_accuracy`: accuracy under independent fault draws;
- :func:`run_ftt`: normal vs FTT training of a named training reference (:mod:`resil.training.references`:
  the bundled models, or ones you register) or of your own model and data, as an :class:`FTTResult`.

Fault-aware training (ISimDL) is in :mod:`resil.training.fat`. Fault-tolerant architecture
search (a small FT-NAS: :func:`resil.training.search.search` over an :class:`SearchSpace` of :class:`Arch` digits CNNs,
reward ``(1 - beta) * clean + beta * faulty``) is in :mod:`resil.training.search`; run
directories of ``resil harden ftt|fat|search`` in :mod:`resil.training.store`.

Example:
    >>> import torch
    >>> from resil.training.ftnas import MiBB
    >>> from resil.training import prepare
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 10))
    >>> ftt = prepare(net, MiBB(p_m=1e-3), alpha=0.5)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    >>> for _ in range(2):
    ...     opt.zero_grad(); ftt.loss(x, y).backward(); opt.step()
    >>> net = ftt.convert()
"""

from .ftt import FTT, FTTResult, convert, faulty_accuracy, prepare, run_ftt, train_ftt
from .search import Arch, SearchResult, SearchSpace
from .store import RunStore

__all__ = [
           "FTT",
           "Arch",
           "FTTResult",
           "RunStore",
           "SearchResult",
           "SearchSpace",
           "convert",
           "faulty_accuracy",
           "prepare",
           "run_ftt",
           "train_ftt",
]
