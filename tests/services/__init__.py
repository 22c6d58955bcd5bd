"""Tests of the services domain (seed 002)."""
