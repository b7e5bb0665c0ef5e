"""Scope's topology views rendered from the replayed connection table."""
