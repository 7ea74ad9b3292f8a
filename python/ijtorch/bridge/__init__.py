"""The only part of ijtorch that knows Java: JVM + ImageJ start-up, commands, conversion.

Nothing here starts at import; :func:`start` (or the first call that needs ImageJ) does.
"""

from .registry import (
    command,
    macro_function,
    register_command,
    register_function,
    registered_commands,
    registered_functions,
)
from ._fiji import attach, fiji_gateway
from ._imgplus import like_input, to_image
from ._jython import run_jython
from ._convert import imageplus_to_numpy, imglib2_to_numpy, numpy_to_imageplus, numpy_to_imglib2
from ._macro import MacroResult, run_command, run_macro
from .apply import add_rois_to_manager, labels_to_imageplus, results_table
from ._runtime import Runtime, is_started, runtime, start

__all__ = [
    "imageplus_to_numpy", "imglib2_to_numpy", "numpy_to_imageplus", "numpy_to_imglib2",
    "add_rois_to_manager", "labels_to_imageplus", "results_table",
    "MacroResult", "Runtime", "command", "is_started", "macro_function",
    "register_command", "register_function", "registered_commands", "registered_functions",
    "run_command", "run_macro", "runtime", "start", "attach", "fiji_gateway", "run_jython", "to_image",
    "like_input",
]
