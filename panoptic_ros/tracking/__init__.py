"""Tracking: stable instance ids across frames (tracker) and their evaluation (STQ, identity switches)."""
