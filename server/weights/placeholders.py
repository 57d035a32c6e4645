"""Inert stand-ins for the classes a checkpoint pickles and we do not know (or want) to import.

Why: a real LaMa checkpoint pickles omegaconf configs and Lightning classes. Loading it
must not need them installed, and must never run their code. The restricted unpickler
(:mod:`.unpickler`) turns every such global into a :class:`Placeholder` subclass made on
the fly, and the archive readers hand those back: they are the data model of what a
checkpoint held, which :mod:`.formats` then reads (a pickled config with
:func:`placeholder_to_plain`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = ["Placeholder", "make_placeholder", "placeholder_to_plain"]


class Placeholder:
    """Base of the stand-ins for unknown pickled classes.

    A subclass is created per ``(module, name)``; it never imports that module. Whatever the
    pickle does with an instance is recorded rather than executed:

    - ``args`` / ``kwargs``: what ``NEWOBJ`` / ``REDUCE`` passed to the class;
    - ``state``: what ``BUILD`` passed (for TorchScript modules, the attribute dict);
    - ``dict_items`` / ``list_items``: what ``SETITEMS`` / ``APPENDS`` added (dict- and
      list-like classes such as omegaconf's ``DictConfig`` pickle their content that way).
    """

    placeholder_module: ClassVar[str] = ""
    placeholder_name: ClassVar[str] = ""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    dict_items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        # NEWOBJ calls __new__ without __init__, so the recording starts here.
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.dict_items = {}
        self.list_items = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept anything: the arguments were already recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    @classmethod
    def qualified_name(cls) -> str:
        """``module.name`` as the pickle spelled it."""
        return f"{cls.placeholder_module}.{cls.placeholder_name}"

    def __repr__(self) -> str:
        return f"<placeholder {self.qualified_name()}>"


def make_placeholder(module: str, name: str) -> type[Placeholder]:
    cls_name = re.sub(r"\W", "_", name) or "Unnamed"
    return type(
        cls_name,
        (Placeholder,),
        {"placeholder_module": module, "placeholder_name": name, "__module__": __name__},
    )


def placeholder_to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn a pickled config (placeholders of omegaconf classes) into plain dicts and lists.

    Why: a Lightning checkpoint's ``hyper_parameters`` is a pickled ``DictConfig``. We want
    its values without omegaconf. Two pickled shapes occur: items added with ``SETITEMS``,
    and omegaconf's own ``__getstate__`` dict (``_content`` holding nodes with ``_val``).
    Raises ``ValueError`` for anything else that is not plain data.
    """
    if _depth > 200:
        raise ValueError("config nested too deeply")
    d = _depth + 1
    if isinstance(obj, Placeholder):
        if obj.dict_items:
            return {k: placeholder_to_plain(v, d) for k, v in obj.dict_items.items()}
        if obj.list_items:
            return [placeholder_to_plain(v, d) for v in obj.list_items]
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
        if isinstance(state, dict):
            if "_content" in state:
                return placeholder_to_plain(state["_content"], d)
            if "_val" in state:
                return placeholder_to_plain(state["_val"], d)
        if obj.args == () and state is None:
            return {}
        raise ValueError(f"cannot read a {obj.qualified_name()} as plain data")
    if isinstance(obj, dict):
        return {k: placeholder_to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [placeholder_to_plain(v, d) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ValueError(f"cannot read a {type(obj).__name__} as plain data")
