"""Local client training, evaluation and the round-level learning-rate schedule.

Import the submodules directly (:mod:`fedlora.training.local`, :mod:`fedlora.training.evaluate`,
:mod:`fedlora.training.schedule`); the package re-exports nothing so that the cheap schedule does
not drag in torch.
"""
