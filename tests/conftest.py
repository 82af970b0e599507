import os

# Tests build many small FFT plans: estimate them instead of measuring (same results).
os.environ.setdefault("PTYENGINE_FFTW_PLANNER", "FFTW_ESTIMATE")
