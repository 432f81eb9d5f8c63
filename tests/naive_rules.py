"""Plain-numpy reference formulas for the learning rules, written from SCIENCE.md alone.

Slow on purpose: explicit loops over passes and samples, np.outer for every update term,
no shared code with noisysim.rules. Shapes follow docs/internal-api.md (row-major batches,
W_l (N_l, N_{l-1})); layer indices are 0-based.

Arguments are plain arrays:
    dell[k][n]        loss change of perturbed pass k (k = 0..K-1) for sample n
    eps[k][l][n]      node perturbation injected in layer l of pass k
    da[k][l][n]       measured pre-activation change of layer l in pass k
    x_ref[l][n]       reference-pass input x*_{l-1} of layer l
"""

from __future__ import annotations

import numpy as np

# -- a forward pass in plain numpy ------------------------------------------------------


def activation(name: str, params: dict, a: np.ndarray) -> np.ndarray:
    if name == "identity":
        return a.copy()
    if name == "tanh":
        return np.tanh(a)
    if name == "leaky_relu":
        return np.where(a > 0, a, params.get("slope", 0.01) * a)
    if name == "step":
        return (a > params.get("threshold", 0.0)).astype(a.dtype)
    raise NotImplementedError(name)


def sample_loss(name: str, z: np.ndarray, t) -> float:
    """ell = -log softmax(z)[t], mean_c (softmax(z) - onehot(t))^2 or 1/2 ||z - t||^2 for
    one sample."""
    if name == "cross_entropy":
        m = z.max()
        return float(m + np.log(np.sum(np.exp(z - m))) - z[int(t)])
    if name == "softmax_mse":
        p = np.exp(z - z.max())
        p /= p.sum()
        return float(np.mean((p - np.eye(z.size)[int(t)]) ** 2))
    return float(0.5 * np.sum((z - t) ** 2))


def forward(layers, acts, x, eps=None, dW=None, db=None):
    """One pass: per layer x*_{l-1} (B, N_{l-1}) and a_l (B, N_l), and the output (B, N_L).

    layers: list of (W, b, R) (b, R may be None); acts: list of (name, params);
    eps[l] (B, N_l) node perturbation; dW[l], db[l] weight/bias perturbation.
    """
    h = np.array(x, dtype=np.float64)
    inputs, pres = [], []
    for l, (W, b, R) in enumerate(layers):
        xs = h if R is None else np.array([R @ h[n] for n in range(h.shape[0])])
        Wl = W + (dW[l] if dW is not None else 0.0)
        a = np.zeros((h.shape[0], W.shape[0]))
        for n in range(h.shape[0]):
            a[n] = Wl @ xs[n]
            if b is not None:
                a[n] = a[n] + b + (db[l] if db is not None else 0.0)
            if eps is not None and eps[l] is not None:
                a[n] = a[n] + eps[l][n]
        inputs.append(xs)
        pres.append(a)
        h = activation(*acts[l], a)
    return inputs, pres, h


def losses(loss_name, out, targets) -> np.ndarray:
    return np.array([sample_loss(loss_name, out[n], targets[n]) for n in range(out.shape[0])])


def batch_loss(loss_name, layers, acts, x, targets) -> float:
    return float(np.mean(losses(loss_name, forward(layers, acts, x)[2], targets)))


# -- the rules (SCIENCE.md, "Learning rules") -------------------------------------------


def np_rule(dell, eps, x_ref, sigma, n_layers):
    """NP: g_W_l = mean_n (dell_n / sigma^2) eps_{l,n} x*_{l-1,n}^T, averaged over K passes."""
    K, B = len(dell), len(dell[0])
    out = []
    for l in range(n_layers):
        gW = np.zeros((eps[0][l].shape[1], x_ref[l].shape[1]))
        gb = np.zeros(eps[0][l].shape[1])
        for k in range(K):
            for n in range(B):
                c = dell[k][n] / sigma**2
                gW += c * np.outer(eps[k][l][n], x_ref[l][n])
                gb += c * eps[k][l][n]
        out.append((gW / (K * B), gb / (K * B)))
    return out


def inp_rule(dell_by_layer, da_by_layer, x_ref):
    """INP: g_W_k = mean_n dell^(k)_n N_k da_{k,n} / ||da_{k,n}||^2 x*_{k-1,n}^T.

    dell_by_layer[k][j][n], da_by_layer[k][j][n]: pass j (of K) that perturbed layer k.
    A zero ||da|| contributes nothing.
    """
    out = []
    for k in range(len(da_by_layer)):
        K, B = len(da_by_layer[k]), len(da_by_layer[k][0])
        N_k = da_by_layer[k][0].shape[1]
        gW = np.zeros((N_k, x_ref[k].shape[1]))
        gb = np.zeros(N_k)
        for j in range(K):
            for n in range(B):
                d = da_by_layer[k][j][n]
                sq = float(d @ d)
                if sq == 0.0:
                    continue
                c = dell_by_layer[k][j][n] * N_k / sq
                gW += c * np.outer(d, x_ref[k][n])
                gb += c * d
        out.append((gW / (K * B), gb / (K * B)))
    return out


def anp_rule(dell, da, x_ref):
    """ANP: g_W_l = mean_n dell_n N da_{l,n} / ||da_n||^2 x*_{l-1,n}^T.

    ||da_n||^2 sums over all layers, N = number of nodes in all layers (output included).
    """
    K, B, L = len(dell), len(dell[0]), len(da[0])
    N = sum(da[0][l].shape[1] for l in range(L))
    out = [[np.zeros((da[0][l].shape[1], x_ref[l].shape[1])), np.zeros(da[0][l].shape[1])]
           for l in range(L)]
    for k in range(K):
        for n in range(B):
            sq = sum(float(da[k][l][n] @ da[k][l][n]) for l in range(L))
            if sq == 0.0:
                continue
            c = dell[k][n] * N / sq
            for l in range(L):
                out[l][0] += c * np.outer(da[k][l][n], x_ref[l][n])
                out[l][1] += c * da[k][l][n]
    return [(gW / (K * B), gb / (K * B)) for gW, gb in out]


def wp_rule(dL, psi_W, psi_b, sigma):
    """WP: g_W = (dL / sigma^2) Psi with dL the batch-mean loss change, averaged over K."""
    K, L = len(dL), len(psi_W[0])
    out = []
    for l in range(L):
        gW = sum(dL[k] / sigma**2 * psi_W[k][l] for k in range(K)) / K
        gb = None if psi_b is None else sum(dL[k] / sigma**2 * psi_b[k][l] for k in range(K)) / K
        out.append((gW, gb))
    return out


def directional_derivative(loss_name, layers, acts, x, targets, vW, vb, h=1e-6) -> float:
    """(d/dt) mean loss(theta + t v) at t = 0 by central differences (float64)."""
    def shifted(t):
        return [(W + t * vW[l], None if b is None else b + t * vb[l], R)
                for l, (W, b, R) in enumerate(layers)]
    up = batch_loss(loss_name, shifted(h), acts, x, targets)
    down = batch_loss(loss_name, shifted(-h), acts, x, targets)
    return (up - down) / (2 * h)


def fg_rule(loss_name, layers, acts, x, targets, tangents_W, tangents_b):
    """Forward gradient: g = mean_k (grad . v_k) v_k, grad . v by finite differences."""
    K, L = len(tangents_W), len(layers)
    out = [[np.zeros_like(W), None if b is None else np.zeros_like(b)] for W, b, _ in layers]
    for k in range(K):
        vb = tangents_b[k] if tangents_b is not None else [None] * L
        d = directional_derivative(loss_name, layers, acts, x, targets, tangents_W[k], vb)
        for l in range(L):
            out[l][0] += d * tangents_W[k][l] / K
            if out[l][1] is not None:
                out[l][1] += d * vb[l] / K
    return [tuple(g) for g in out]


def gradient(loss_name, layers, acts, x, targets, h=1e-6):
    """Exact batch-mean gradient by central differences, one parameter at a time."""
    out = []
    for l, (W, b, R) in enumerate(layers):
        grads = []
        for name, arr in (("W", W), ("b", b)):
            if arr is None:
                grads.append(None)
                continue
            g = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                vals = []
                for t in (h, -h):
                    shifted = [list(p) for p in layers]
                    a2 = arr.copy()
                    a2[idx] += t
                    shifted[l][0 if name == "W" else 1] = a2
                    vals.append(batch_loss(loss_name, [tuple(p) for p in shifted], acts, x,
                                           targets))
                g[idx] = (vals[0] - vals[1]) / (2 * h)
            grads.append(g)
        out.append(tuple(grads))
    return out
