"""Vulnerability analysis: semi-analytical vulnerability factors, PVF, importance-sampling precision."""
