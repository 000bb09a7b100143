"""Independent numpy references shared by the tests (nothing here calls the package)."""

import numpy as np


def conv_matrix_np(weight, in_shape, stride):
    """Unrolled valid-padding cross-correlation matrix, built entry by entry (no torch conv involved).

    Output index order (o, i, j) and input order (c, y, x), both row-major, as in flattening NCHW tensors.
    Returns the matrix and the output shape (O, oh, ow).
    """
    weight = np.asarray(weight)
    O, C, kh, kw = weight.shape
    _, H, W = in_shape
    oh, ow = (H - kh) // stride + 1, (W - kw) // stride + 1
    A = np.zeros((O * oh * ow, C * H * W))
    for o in range(O):
        for i in range(oh):
            for j in range(ow):
                row = (o * oh + i) * ow + j
                for c in range(C):
                    for a in range(kh):
                        for b in range(kw):
                            A[row, (c * H + i * stride + a) * W + j * stride + b] += weight[o, c, a, b]
    return A, (O, oh, ow)
