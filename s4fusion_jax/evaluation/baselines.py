"""Fusion baselines that need no model: ``METHODS[name](ir, vi_y)`` on arrays in [0, 1].

``ir`` and ``vi_y`` are the infrared image and the visible image's Y (luma), same shape, any
layout, values in [0, 1]; each baseline returns the fused Y of that shape. Copying one source
is the floor a fusion must clear: its MI is that source's entropy and its VIF that of an
undistorted image. NumPy only, so the command line can list the names without importing JAX.
"""

import numpy as np

METHODS = {
    "average": lambda ir, vi_y: (ir + vi_y) / 2,
    "max": np.maximum,
    "infrared": lambda ir, vi_y: ir,
    "visible": lambda ir, vi_y: vi_y,
}
