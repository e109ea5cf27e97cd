"""The fedlora ServerApp."""
