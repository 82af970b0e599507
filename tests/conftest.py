import os
import shutil

# Tests build many small FFT plans: estimate them instead of measuring (same results).
os.environ.setdefault("PTYENGINE_FFTW_PLANNER", "FFTW_ESTIMATE")
# Without a GPU, numba.cuda kernels run in numba's CUDA simulator (set before numba loads).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
