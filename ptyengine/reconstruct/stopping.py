"""The ML engine's stopping rules (:mod:`.ml`, "Stopping"), from the data's own statistics.

Held-out pixels: the engine keeps the latest fitted iterate whose held-out half-deviance D_h
lies within HELD_TOLERANCE of the lowest seen, and stops when none has for ``patience``
iterations. Without held-out pixels: the run stops when the objective L has fallen by less
than CONVERGED per iteration over ``patience`` iterations (L can flatten while the phase
still improves, so this rule is used only without held-out pixels).
"""

from __future__ import annotations

#: Half-deviance: held-out changes smaller than this are noise (at 100 e/Å² it jitters by
#: 0.5–2 between iterates and rises by up to ~5 in the first CG steps; RESULTS.md).
HELD_TOLERANCE = 4.0
#: half-deviance per iteration: L falling by less than this has converged
CONVERGED = 0.1


def converged(objective, patience: int) -> bool:
    """True when L fell by less than CONVERGED (half-deviance) per iteration on average over
    the last ``patience`` iterations: changes the data cannot tell from chance."""
    if len(objective) <= patience:
        return False
    return objective[-1 - patience] - objective[-1] < CONVERGED * patience
