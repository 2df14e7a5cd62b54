"""Hardening: fault-tolerant and fault-aware training, fault-tolerant architecture search."""
