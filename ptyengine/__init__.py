"""ptyengine: GPU-accelerated 4D-STEM ptychography.

Modules, with data flowing one way (see DESIGN.md):
backend -> physics -> calibration/io -> structures/potentials -> simulate -> cli.
"""

__version__ = "0.1.0"
