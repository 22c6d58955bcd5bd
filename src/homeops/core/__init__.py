"""Shared machinery with no domain knowledge: config, logging, errors, seams, jobs, health."""
