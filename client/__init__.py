"""The fedlora ClientApp."""
