"""Model sources, loading and LoRA wrapping.

Import the submodules directly (:mod:`fedlora.models.sources`, :mod:`fedlora.models.build`,
:mod:`fedlora.models.tiny`): this package deliberately re-exports nothing, so that importing it
does not pull in torch and transformers for code that only needs, say, :func:`cache_dir`.
"""
