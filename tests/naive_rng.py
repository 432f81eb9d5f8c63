"""Slow plain-Python / plain-numpy references for noisysim.kernels.rng.

The hash is re-derived with Python integers (masked to 64 bits), the floats with numpy's
libm (float64) or long double, never with the code under test.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1

MIX_M1 = 0xBF58476D1CE4E5B9
MIX_M2 = 0x94D049BB133111EB
K_SEED = 0x9E3779B97F4A7C15
K_STREAM = 0xD1B54A32D192ED03
K_STEP = 0xAEF17502108EF2D9
K_LAYER = 0xDB4F0B9175AE2165
K_ELEMENT = 0xC2B2AE3D27D4EB4F
NORMAL_DOMAIN = 0x5851F42D4C957F2D


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX_M1) & MASK64
    z = ((z ^ (z >> 27)) * MIX_M2) & MASK64
    return z ^ (z >> 31)


def key(seed: int, stream: int, step: int, layer: int) -> int:
    h = mix64(seed ^ K_SEED)
    h = mix64(h ^ ((stream * K_STREAM) & MASK64))
    h = mix64(h ^ ((step * K_STEP) & MASK64))
    return mix64(h ^ ((layer * K_LAYER) & MASK64))


def random_bits(k: int, element: int) -> int:
    return mix64(k ^ ((element * K_ELEMENT) & MASK64))


def uniform(k: int, element: int) -> float:
    # (2 * (bits >> 12) + 1) / 2**53, exact in a Python float
    return (2 * (random_bits(k, element) >> 12) + 1) / 2.0**53


def _pair_uniforms(k: int, pair: int) -> tuple[float, float]:
    kn = k ^ NORMAL_DOMAIN
    return uniform(kn, 2 * pair), uniform(kn, 2 * pair + 1)


def normal_pair(k: int, pair: int) -> tuple[float, float]:
    """Textbook Box-Muller with numpy's libm: r = sqrt(-2 ln u1), angle 2 pi u2."""
    u1, u2 = _pair_uniforms(k, pair)
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return float(r * np.cos(angle)), float(r * np.sin(angle))


def normal(k: int, element: int) -> float:
    return normal_pair(k, element // 2)[element % 2]


def uniform_array(seed, stream, step, layer, shape) -> np.ndarray:
    k = key(seed, stream, step, layer)
    n = int(np.prod(shape, dtype=np.int64))
    return np.array([uniform(k, i) for i in range(n)], dtype=np.float64).reshape(shape)


def normal_array(seed, stream, step, layer, shape) -> np.ndarray:
    k = key(seed, stream, step, layer)
    n = int(np.prod(shape, dtype=np.int64))
    return np.array([normal(k, i) for i in range(n)], dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------- high-precision references


def log_longdouble(u: np.ndarray) -> np.ndarray:
    """ln(u) in long double (80-bit on x86-64: 11 more bits than float64)."""
    return np.log(np.asarray(u, dtype=np.longdouble))


def sincos_turn_longdouble(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin 2 pi u, cos 2 pi u) in long double, accurate in relative terms near the zeros.

    2 pi u itself cannot be formed accurately near a multiple of pi/2 (its rounding error is
    relative to 2 pi u, not to the distance to the zero), so reduce u exactly first:
    d = u - q/4 with q = round(4u) is exact in float64 (same binade arithmetic on a 2**-53
    grid), the angle 2 pi d lies in [-pi/4, pi/4], and the quadrant q rotates the result.
    """
    u = np.asarray(u, dtype=np.float64)
    q = np.rint(4.0 * u)
    d = (u - q / 4.0).astype(np.longdouble)
    pi = np.longdouble("3.14159265358979323846264338327950288")
    a = 2 * pi * d
    s, c = np.sin(a), np.cos(a)
    q = q.astype(np.int64) % 4
    sin = np.select([q == 0, q == 1, q == 2, q == 3], [s, c, -s, -c])
    cos = np.select([q == 0, q == 1, q == 2, q == 3], [c, -s, -c, s])
    return sin, cos
