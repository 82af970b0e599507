"""Low-dose HRTEM toolkit (issue 18): zone-axis alignment from one electron-diffraction
pattern (:mod:`.zone_axis`), drift correction of dose-fractionated stacks with the
amplitude filter (:mod:`.drift`), and CTF correction of weak-phase images (:mod:`.ctf`).

Test data come from the simulator's plane-wave (TEM) mode, :mod:`ptyengine.planewave`.
Units: Å, mrad (degrees for holder tilts), eV, e/Å² (e/pixel for frame doses).
"""
