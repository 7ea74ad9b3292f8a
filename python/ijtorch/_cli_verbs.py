"""The task verbs of the CLI (segment, train, evaluate, demo), kept apart from the core CLI."""

from __future__ import annotations

import argparse


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    """Add task verbs; filled in as task modules land."""
    return None
