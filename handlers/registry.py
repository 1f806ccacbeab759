"""Handler registry: route configs name handlers; this resolves the names.

Built-in handlers are imported lazily so the watcher never pays for torch/demucs
imports it does not need. A route may also name a custom handler as
"package.module:attribute": a class implementing the protocol (checked before it is
instantiated, with no arguments) or such an instance. Anything else is a config error.

Adding a built-in handler is its module plus one line in BUILTIN_HANDLERS: the
handler class declares its extensions, Modal image and GPU kind, models and
default routes (handlers/protocol.py, docs/handlers.md).
"""

from __future__ import annotations

import importlib
from functools import cache

from handlers.exceptions import HandlerConfigError
from handlers.protocol import Handler, HandlerInfo, describe, protocol_problem
from infra.text import one_line

# The order is the order of the built-in routes (watcher/config.py builtin_routes).
BUILTIN_HANDLERS: dict[str, str] = {
    "stems": "handlers.stems:StemsHandler",
    "vertical": "handlers.vertical:VerticalHandler",
    "proxy": "handlers.proxy:ProxyHandler",
    "frames": "handlers.frames:FramesHandler",
    "highlights": "handlers.highlights:HighlightsHandler",
    "faces": "handlers.faces:FacesHandler",
    "render": "handlers.render:RenderHandler",
}


def known_handler_names() -> list[str]:
    return sorted(BUILTIN_HANDLERS)


@cache
def get_handler(name: str) -> Handler:
    """The handler instance for a built-in name or a "module:attr" reference."""
    target = BUILTIN_HANDLERS.get(name, name)
    if ":" not in target:
        raise HandlerConfigError(
            f"unknown handler {name!r}: use one of {', '.join(known_handler_names())} "
            "or 'package.module:Attribute'"
        )
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HandlerConfigError(f"cannot load handler {name!r}: {one_line(exc)}") from exc
    except Exception as exc:  # the user's module failed while importing: still their config
        raise HandlerConfigError(
            f"cannot load handler {name!r}: importing {module_name} raised "
            f"{type(exc).__name__}: {one_line(exc)}"
        ) from exc
    # Checked before anything is called: a route must not be able to instantiate (run
    # the constructor of) an arbitrary class or call an arbitrary function.
    problem = protocol_problem(obj)
    if problem:
        raise HandlerConfigError(
            f"{name!r} does not implement the handler protocol: {problem} (see docs/handlers.md)"
        )
    if isinstance(obj, type):
        try:
            handler = obj()
        except Exception as exc:  # a handler class takes no arguments (docs/handlers.md)
            raise HandlerConfigError(
                f"cannot create handler {name!r}: {type(exc).__name__}: {one_line(exc)}"
            ) from exc
    else:
        handler = obj
    if not isinstance(handler, Handler):
        raise HandlerConfigError(f"{name!r} does not implement the handler protocol")
    describe(handler)  # a bad self-description is a config error when the route loads
    return handler


def handler_info(name: str) -> HandlerInfo:
    """What the handler a route names declares about itself (defaults filled in)."""
    return describe(get_handler(name))
