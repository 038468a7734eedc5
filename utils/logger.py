"""The project logger and terminal colouring. Entry scripts call `set_logging()`; importing changes nothing."""

import logging
import os
import sys

LOGGER = logging.getLogger("yolov5")

_COLOURS = {
    "black": "\033[30m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m",
    "blue": "\033[34m", "magenta": "\033[35m", "cyan": "\033[36m", "white": "\033[37m",
    "bright_black": "\033[90m", "bright_red": "\033[91m", "bright_green": "\033[92m",
    "bright_yellow": "\033[93m", "bright_blue": "\033[94m", "bright_magenta": "\033[95m",
    "bright_cyan": "\033[96m", "bright_white": "\033[97m",
    "end": "\033[0m", "bold": "\033[1m", "underline": "\033[4m",
}


def colorstr(*args: str) -> str:
    """Wrap the last argument in ANSI codes named by the others, e.g. colorstr('blue', 'bold', 'text').

    With a single argument the style defaults to blue bold. Colours are dropped when NO_COLOR is set.
    """
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    if os.environ.get("NO_COLOR"):
        return str(text)
    return "".join(_COLOURS[s] for s in styles) + f"{text}" + _COLOURS["end"]


def set_logging(verbose: bool = True, rank: int = -1) -> None:
    """Send the project logger to stdout as plain messages; only rank -1/0 logs at INFO."""
    level = logging.INFO if verbose and rank in (-1, 0) else logging.WARNING
    LOGGER.setLevel(level)
    if not any(getattr(h, "_yolov5", False) for h in LOGGER.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._yolov5 = True
        LOGGER.addHandler(handler)
    LOGGER.propagate = False
