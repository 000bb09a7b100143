"""Certificates: CRC (this package's core) and the baselines' certified radii (CROWN, IBP, CROWN-IBP, CNN-Cert,
COAP).

:func:`radius_function` is the registry of the baselines: for a ``sorobust certify --method`` (a
:class:`sorobust.vocab.CertifyMethod` other than ``crc``) it returns the function computing per-point certified
radii, called as ``fn(model, x, y, targets=..., steps=..., generator=...)`` and returning ``{"radius", "target",
"time_s"}``. A new baseline is its module plus one entry here and one in ``sorobust.vocab``.
"""

from functools import partial

from .crc import CRCResult, crc, runner_up

__all__ = ["CRCResult", "crc", "runner_up", "radius_function"]

#: baseline --method -> (module of sorobust.certify, its function, fixed keyword arguments)
_RADIUS = {
    "crown": ("crown", "certified_radius", {"method": "crown"}),
    "ibp": ("crown", "certified_radius", {"method": "ibp"}),
    "crown-ibp": ("crown", "certified_radius", {"method": "crown-ibp"}),
    "cnn-cert": ("crown", "certified_radius", {"method": "crown"}),  # CROWN on the unrolled convolution
    "coap": ("coap", "certified_radius", {}),
}


def radius_function(method: str):
    """The certified-radius function of the baseline ``method`` (module docstring)."""
    from importlib import import_module

    from .. import vocab

    method = str(vocab.coerce(vocab.CertifyMethod, method, "certification method"))
    if method not in _RADIUS:
        raise ValueError(f"'{method}' is not a baseline with a certified radius (crc has its own path)")
    module, name, kwargs = _RADIUS[method]
    return partial(getattr(import_module(f"{__name__}.{module}"), name), **kwargs)
