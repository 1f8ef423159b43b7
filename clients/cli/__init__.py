"""Clearance CLI."""

from clients.cli.main import main

__all__ = ["main"]
