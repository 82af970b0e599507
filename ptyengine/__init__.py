"""ptyengine: GPU-accelerated 4D-STEM ptychography.

Modules, with data flowing one way (see DESIGN.md):
backend -> physics -> calibration/io -> structures/potentials -> simulate -> cli.

The Python interface (:mod:`ptyengine.api`, the functions the command line calls)::

    import ptyengine as pe
    ds = pe.open("sto.zarr")
    res = pe.reconstruct(ds, method="ml")   # a Result: res.phase (rad), res.show()

``pe.reconstruct``, ``pe.simulate`` and ``pe.suggest`` share their names with the
subpackage and modules that do the work (:mod:`ptyengine.reconstruct`, ...): the package
keeps the functions, and any other attribute of them is the submodule's
(``pe.reconstruct.ml`` is the module), so ``import ptyengine.reconstruct.ml`` and
``from ptyengine.simulate import simulate`` work as before.
"""

import functools
import importlib
import sys
import types

__version__ = "0.1.0"

from .api import Result, load, open  # noqa: E402  (open: pe.open, on purpose)

#: API functions named like a submodule
_ENTRIES = ("reconstruct", "simulate", "suggest")


class _Entry:
    """A function of :mod:`ptyengine.api` whose name is also a submodule's: calling it calls
    the function; any other attribute is the submodule's."""

    def __init__(self, name: str):
        from . import api

        functools.update_wrapper(self, getattr(api, name))
        self._module = f"{__name__}.{name}"

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._module), attr)

    def __repr__(self) -> str:
        return f"<function ptyengine.{self.__name__}>"


class _Package(types.ModuleType):
    """The package module: importing a submodule named like an API function leaves the
    function in place (the submodule stays in ``sys.modules`` and behind the function)."""

    def __setattr__(self, name, value):
        if name in _ENTRIES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


reconstruct = _Entry("reconstruct")
simulate = _Entry("simulate")
suggest = _Entry("suggest")
sys.modules[__name__].__class__ = _Package

__all__ = ["Result", "load", "open", "reconstruct", "simulate", "suggest", "__version__"]
