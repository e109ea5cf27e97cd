"""Deployment helpers that no library provides: credentials for TLS and SuperNode authentication."""
