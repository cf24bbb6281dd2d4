# SPDX-License-Identifier: MIT
"""argspec.py: celeriac's argument rules (src/task/context.c, celeriac_arg_*)
in Python, so the reference worker raises exactly what celeriac stores:
positional argument `index` first, else keyword `name`; a missing one or one
of the wrong JSON type is a TypeError with celeriac's text.
"""
import math
from celery import current_task

_MISSING = object()


def _task_name():
    return current_task.name


def _type_name(v):
    if isinstance(v, bool):
        return "bool"
    if v is None:
        return "NoneType"
    return {dict: "dict", list: "list", str: "str", int: "int", float: "float"}.get(type(v), "object")


def _find(args, kwargs, index, name):
    if index < len(args):
        return args[index]
    if name is not None and name in kwargs:
        return kwargs[name]
    return _MISSING


def _require(args, kwargs, index, name):
    v = _find(args, kwargs, index, name)
    if v is _MISSING:
        if name is not None:
            raise TypeError("%s() missing required argument: '%s'" % (_task_name(), name))
        raise TypeError("%s() missing required positional argument %d" % (_task_name(), index))
    return v


def _wrong(index, name, want, v):
    if name is not None:
        return TypeError("%s() argument '%s' must be %s, not %s" % (_task_name(), name, want, _type_name(v)))
    return TypeError("%s() argument %d must be %s, not %s" % (_task_name(), index, want, _type_name(v)))


def arg_int(args, kwargs, index, name):
    v = _require(args, kwargs, index, name)
    if isinstance(v, bool):
        raise _wrong(index, name, "int", v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == math.floor(v) and -9.2e18 <= v <= 9.2e18:
        return int(v)
    raise _wrong(index, name, "int", v)


def arg_number(args, kwargs, index, name):
    v = _require(args, kwargs, index, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _wrong(index, name, "float", v)
    return float(v)


def arg_str(args, kwargs, index, name):
    v = _require(args, kwargs, index, name)
    if not isinstance(v, str):
        raise _wrong(index, name, "str", v)
    return v


def arg_any(args, kwargs, index, name):
    return _require(args, kwargs, index, name)
