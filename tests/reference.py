"""The reference composition the fused ops must match (docs/design.md), and the
dtype-derived tolerances the parity tests use."""

from __future__ import annotations

import mlx.core as mx
from fusedconv.reference import normalized_error, reference_activation, reference_conv3x3  # noqa: F401

# Unit roundoff of each storage dtype (half the spacing of values in [1, 2)).
UNIT_ROUNDOFF = {mx.float32: 2.0**-24, mx.float16: 2.0**-11, mx.bfloat16: 2.0**-8}

# Max |fused - reference_f32| / max|reference_f32|. The fused op rounds each
# activation to the storage dtype (u relative) and the output once (u/2); over
# a K-term dot product with random signs the activation errors add like a
# random walk, which stays well under 2u relative to the largest output. 4u
# leaves room for the tail. float32 is bounded instead by accumulation-order
# differences of K <= 9*512 f32 products (~sqrt(K) * 2^-24 ~ 1e-6): 1e-5.
PARITY_TOL_F32_REF = {
    mx.float32: 1e-5,
    mx.float16: 4 * UNIT_ROUNDOFF[mx.float16],
    mx.bfloat16: 4 * UNIT_ROUNDOFF[mx.bfloat16],
}
# Against the same composition run in the storage dtype, which itself rounds
# after the norm, the SiLU, the conv and each add: both sides carry ~4u.
PARITY_TOL_SAME_DTYPE = {
    mx.float32: 1e-5,
    mx.float16: 8 * UNIT_ROUNDOFF[mx.float16],
    mx.bfloat16: 8 * UNIT_ROUNDOFF[mx.bfloat16],
}
