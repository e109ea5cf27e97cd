"""Client-level differential privacy for the LoRA factors (see docs/privacy.md).

:mod:`fedlora.privacy.mechanism` clips an update in the space a strategy aggregates and draws the
Gaussian noise; :mod:`fedlora.strategies.privacy_accountant` turns rounds into epsilon with Flower's
RDP accountant (over ``dp-accounting``). What a run has released (its ledger) is kept by
:class:`fedlora.strategies.privacy_guard.PrivacyGuard` on the server. No Flower imports: the
strategy and the client call these with plain tensors.
"""
