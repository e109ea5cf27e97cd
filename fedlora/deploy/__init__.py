"""Deployment pieces no library provides: the resident node worker with its thin ClientApp proxy
(:mod:`fedlora.deploy.worker`, :mod:`fedlora.deploy.proxy`), and credentials for TLS and SuperNode
authentication (:mod:`fedlora.deploy.credentials`). See ``docs/deployment.md``."""
