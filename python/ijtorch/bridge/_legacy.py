"""TEMPORARY (issue #14 transition, removed when every command lives in ijtorch/commands/):
old-style ``handler(ctx, params)`` commands on top of the new driver."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from ..commands.command import Command, register
from ..commands.functions import macro_function  # noqa: F401
from ..errors import IjtorchError


class CommandContext:
    def __init__(self, command: str):
        self.command = command

    def current_image(self):
        from jpype import JClass

        imp = JClass("ij.WindowManager").getCurrentImage()
        if imp is None:
            raise IjtorchError(f"{self.command} needs an open image (open one or select its window)")
        return imp

    def progress(self, done: int, total: int, message: str = "") -> None:
        from jpype import JClass

        JClass("ij.IJ").showProgress(done, total)
        if message:
            JClass("ij.IJ").showStatus(f"{self.command}: {message}")


def command(name: str, *, params: type[BaseModel] | None = None) -> Callable:
    from .registry import _NoParams

    def decorate(handler: Callable) -> Callable:
        def compute(inputs: Any, p: Any) -> None:
            ctx = CommandContext(name)
            handler(ctx, p) if params is not None else handler(ctx)

        compute.__module__ = handler.__module__
        doc = (handler.__doc__ or "").strip().split("\n")[0]
        register(Command(name, params or _NoParams, compute, help=doc, needs_image=False))
        return handler

    return decorate
