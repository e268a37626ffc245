"""Contrast transfer function, RELION's parameterisation.

``ctf(s) = scale * exp(-B s^2 / 4) * -sin(chi)``, with
``chi = -pi lambda dz s^2 + pi/2 Cs lambda^3 s^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2))`` and
``dz = -(dU + dV)/2 - (dU - dV)/2 * cos(2 (alpha - angle))`` (underfocus positive in dU, dV;
alpha = azimuth of the spatial frequency). At s = 0 the CTF equals ``+Q0`` (times scale).
Units: defocus in A, angles in degrees, Cs in mm, voltage in kV, B in A^2, frequencies in 1/A.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from numpy.typing import ArrayLike


def electron_wavelength_A(voltage_kV: ArrayLike) -> Union[float, np.ndarray]:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV (a float
    for a scalar voltage, an array like ``voltage_kV`` otherwise)."""
    v = np.asarray(voltage_kV, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def ctf_values(freq_x_invA, freq_y_invA, defocus_u_A, defocus_v_A, defocus_angle_deg,
               voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg=0.0, bfactor_A2=0.0,
               scale=1.0, xp=np):
    """CTF at spatial frequencies (1/A).

    Per-particle parameters have shape (n,) (or are scalars); frequencies have shape (m,) or
    (n, m) and broadcast against ``param[:, None]``. Returns float32 of shape (n, m) (or the
    broadcast shape). ``xp`` is the array module (numpy or cupy).
    """
    def col(a):
        a = xp.asarray(a, dtype=xp.float64)
        return a[:, None] if a.ndim == 1 else a

    fx = xp.asarray(freq_x_invA, dtype=xp.float64)
    fy = xp.asarray(freq_y_invA, dtype=xp.float64)
    lam = col(electron_wavelength_A(voltage_kV) if xp is np else xp.asarray(electron_wavelength_A(
        np.asarray(voltage_kV))))
    cs_A = col(cs_mm) * 1e7
    q0 = col(amplitude_contrast)
    k3 = xp.arctan(q0 / xp.sqrt(1.0 - q0 * q0))
    k5 = xp.deg2rad(col(phase_shift_deg))
    s2 = fx * fx + fy * fy
    azimuth = xp.arctan2(fy, fx)
    du, dv = col(defocus_u_A), col(defocus_v_A)
    dz = -(du + dv) * 0.5 - (du - dv) * 0.5 * xp.cos(2.0 * (azimuth - xp.deg2rad(col(defocus_angle_deg))))
    chi = np.pi * lam * dz * s2 + 0.5 * np.pi * cs_A * lam ** 3 * s2 * s2 - k5 - k3
    out = -xp.sin(chi)
    b = col(bfactor_A2)
    out = out * xp.exp(-b * s2 / 4.0) * col(scale)
    return out.astype(xp.float32)
