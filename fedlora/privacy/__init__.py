"""Client-level differential privacy for the LoRA factors (see docs/privacy.md).

:mod:`fedlora.privacy.mechanism` clips an update in the space a strategy aggregates and draws the
Gaussian noise; :mod:`fedlora.privacy.accountant` turns rounds into epsilon with Google's
``dp-accounting`` RDP accountant. What a run has released (its ledger) is kept by
:class:`fedlora.strategies.privacy_guard.PrivacyGuard` on the server. No Flower imports: the
strategy and the client call these with plain tensors.
"""
