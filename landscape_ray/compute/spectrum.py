"""Spectral quantities of a symmetric operator known only through `matvec(v) -> H v` (NumPy and SciPy, no torch).

    vals, vecs, ends = eigenpairs(matvec, dim, k=5, which="both")  # ARPACK (eigsh) on a LinearOperator
    trace, se, samples = hutchinson(matvec, dim, probes=100)       # E[zᵀHz] over Rademacher z
    slq = density(matvec, dim, steps=80, runs=1)                   # stochastic Lanczos quadrature

Every random draw comes from `numpy.random.default_rng(seed)`, so a rerun with
the same operator gives the same numbers. `which`: "largest" gives the k
largest algebraic eigenvalues (descending), "smallest" the k most negative
(ascending), "both" the first then the second. Eigenvectors are unit rows with
their largest-magnitude entry positive (a fixed sign, for reproducible pictures).

The density follows PyHessian (Yao et al., 2020) and Ghorbani et al. (2019):
Lanczos from a normalized Rademacher vector v gives a tridiagonal T whose
eigenvalues θ_j (nodes) and squared first eigenvector entries w_j (weights,
summing to 1) form a quadrature of the spectral measure,
vᵀ f(H) v ≈ Σ_j w_j f(θ_j); a Gaussian of width σ around each node, averaged
over runs, is the density. Unlike PyHessian, Lanczos stops when the Krylov
space is invariant (then the nodes are exact eigenvalues) instead of restarting
from a new random vector, which would break the quadrature.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, eigsh

ENDS = {"largest": ("LA",), "smallest": ("SA",), "both": ("LA", "SA")}


def operator(matvec, dim: int) -> LinearOperator:
    def apply(v):
        return matvec(np.asarray(v, dtype=np.float64).ravel())

    return LinearOperator((dim, dim), matvec=apply, dtype=np.float64)


def _fix_sign(vectors: np.ndarray) -> np.ndarray:
    """Rows flipped so each one's largest-magnitude entry is positive."""
    peaks = vectors[np.arange(len(vectors)), np.abs(vectors).argmax(axis=1)]
    return vectors * np.where(peaks < 0, -1.0, 1.0)[:, None]


def eigenpairs(
    matvec, dim: int, k: int, which: str = "largest", seed: int = 0, tol: float = 1e-4, maxiter: int = 300
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(eigenvalues (m,), unit eigenvectors (m, dim), end of each: "largest"/"smallest"); m = k or 2k.

    ARPACK's implicitly restarted Lanczos with start vector v0 drawn from `seed`. ARPACK's test is relative to each
    eigenvalue, which never passes for eigenvalues near 0 (the bulk of a network's Hessian) when the products carry
    float32 rounding; so each end is found as the largest eigenvalues of ±H + s·I, s ≈ ‖H‖ (a first, loose solve),
    whose spectrum lies in [0, 2s]: `tol` bounds the residuals relative to the spectral norm. An eigenvalue's error
    is then about (2s·tol)²/gap, its eigenvector's 2s·tol/gap (gap: to the nearest other eigenvalue), so the default
    gives separated eigenvalues to ~1e-8 relative at a modest cost; an end inside a cluster (the near-zero bulk) needs
    many restarts for a small `tol`. `maxiter`: ARPACK restarts (each ~20 products) before ArpackNoConvergence.
    """
    if which not in ENDS:
        raise ValueError(f"which must be one of {', '.join(ENDS)}, got {which!r}")
    if not 1 <= k < dim:
        raise ValueError(f"k must be between 1 and {dim - 1} (the dimension minus one), got {k}")
    op = operator(matvec, dim)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    scale = abs(eigsh(op, k=1, which="LM", v0=v0, tol=1e-2, return_eigenvectors=False)[0])
    values, vectors, ends = [], [], []
    for code in ENDS[which]:
        sign = 1.0 if code == "LA" else -1.0
        shifted = LinearOperator(
            (dim, dim), matvec=lambda v, sign=sign: sign * op.matvec(v) + scale * v.ravel(), dtype=np.float64
        )
        vals, vecs = eigsh(shifted, k=k, which="LA", v0=v0, tol=tol, maxiter=maxiter)
        order = np.argsort(-vals)
        values.append(sign * (vals[order] - scale))
        vectors.append(vecs[:, order].T)
        ends += ["largest" if code == "LA" else "smallest"] * k
    return np.concatenate(values), _fix_sign(np.concatenate(vectors)), ends


def extremes(operator, seed: int = 0, tol: float = 1e-3) -> tuple[float, float]:
    """(λmax, λmin) of an operator with `matvec` and `dim` (a `Curvature` at its current point: `eval.curvature`)."""
    values, _, _ = eigenpairs(operator.matvec, operator.dim, 1, "both", seed, tol)
    return float(values[0]), float(values[1])


def hutchinson(matvec, dim: int, probes: int = 100, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """(trace estimate, its standard error, the zᵀHz samples) from `probes` Rademacher vectors.

    With `probes >= dim` the basis vectors are used instead: the exact trace, standard error 0.
    """
    if probes < 2:
        raise ValueError(f"probes must be >= 2 (a standard error needs two samples), got {probes}")
    if probes >= dim:
        basis = np.eye(dim)
        samples = np.array([matvec(e)[i] for i, e in enumerate(basis)])
        return float(samples.sum()), 0.0, samples
    rng = np.random.default_rng(seed)
    samples = np.empty(probes)
    for i in range(probes):
        z = rng.integers(0, 2, dim).astype(np.float64) * 2 - 1
        samples[i] = z @ matvec(z)
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes)), samples


def lanczos(matvec, v: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the Lanczos quadrature from start vector `v` (full reorthogonalization)."""
    dim = len(v)
    steps = min(steps, dim)
    basis = np.zeros((steps, dim))
    alpha, beta = np.zeros(steps), np.zeros(steps)
    q = v / np.linalg.norm(v)
    m = steps
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha[j] = q @ w
        for _ in range(2):  # Gram–Schmidt twice: float rounding would otherwise bring back converged directions
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if j + 1 == steps or beta[j] <= 1e-10 * max(np.abs(alpha[: j + 1]).max(), beta[:j].max(initial=0.0)):
            m = j + 1  # the end, or an invariant Krylov space: its Ritz values are exact eigenvalues
            break
        q = w / beta[j]
    nodes, vecs = eigh_tridiagonal(alpha[:m], beta[: m - 1])
    return nodes, vecs[0] ** 2


def density(
    matvec, dim: int, steps: int = 80, runs: int = 1, seed: int = 0, num: int = 1000, sigma: float | None = None
) -> dict[str, np.ndarray | float]:
    """Spectral density by stochastic Lanczos quadrature.

    Returns nodes and weights (runs, steps; NaN past an early stop), the grid, the density on it (integrating to 1),
    and σ: by default 1% of the nodes' span; the grid reaches 10σ beyond the extreme nodes.
    """
    rng = np.random.default_rng(seed)
    steps = min(steps, dim)
    nodes = np.full((runs, steps), np.nan)
    weights = np.full((runs, steps), np.nan)
    for r in range(runs):
        z = rng.integers(0, 2, dim).astype(np.float64) * 2 - 1
        theta, w = lanczos(matvec, z, steps)
        nodes[r, : len(theta)], weights[r, : len(w)] = theta, w
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = 0.01 * span if sigma is None else sigma
    grid = np.linspace(lo - 10 * sigma, hi + 10 * sigma, num)
    found = ~np.isnan(nodes)
    gauss = np.exp(-0.5 * ((grid[:, None] - nodes[found][None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return {
        "nodes": nodes,
        "weights": weights,
        "grid": grid,
        "density": gauss @ weights[found] / runs,
        "sigma": float(sigma),
    }
