"""Observe, from outside, that a thread is blocked waiting (in a socket read or a wait on a
lock/event), without any hook in the library: its current Python stack is looked at."""

from __future__ import annotations

import sys
import threading

_BLOCKING = {("socket.py", "readinto"), ("ssl.py", "recv_into"), ("ssl.py", "read"),
             ("threading.py", "wait"), ("selectors.py", "select")}


def blocked(thread: threading.Thread) -> bool:
    """True when ``thread`` is inside a blocking socket read or a ``threading`` wait."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if (code.co_filename.rsplit("/", 1)[-1], code.co_name) in _BLOCKING:
            return True
        frame = frame.f_back
    return False
