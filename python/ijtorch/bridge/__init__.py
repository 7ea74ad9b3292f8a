"""The only part of ijtorch that knows Java: JVM + ImageJ start-up, commands, conversion.

Nothing here starts at import; :func:`start` (or the first call that needs ImageJ) does.
"""

from ._commands import (
    CommandContext,
    command,
    macro_function,
    register_command,
    register_function,
    registered_commands,
    registered_functions,
)
from ._macro import MacroResult, run_command, run_macro
from ._runtime import Runtime, is_started, runtime, start

__all__ = [
    "CommandContext", "MacroResult", "Runtime", "command", "is_started", "macro_function",
    "register_command", "register_function", "registered_commands", "registered_functions",
    "run_command", "run_macro", "runtime", "start",
]
