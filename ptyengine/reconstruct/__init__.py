"""Reconstructions: each a module of plain functions plus a small result type.

* :mod:`.icom`: centre of mass, scan–detector rotation, iCOM and iDPC phase images.
"""
