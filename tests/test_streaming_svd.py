"""Streaming Frequent-Directions SVD: accuracy against an exact SVD, resumption, centring, validation."""
import math

import pytest
import torch

from agora_core.agora_m.streaming_svd import FrequentDirections, resolve_ranks, streaming_svd, subspace_sines
from agora_core.types.errors import AgoraError


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def low_rank_plus_noise(n=600, d=400, rank=8, noise=0.02, seed=0):
    """``U diag(s) V^T + noise``: a clear spectral gap after ``rank`` (s from 100 down to 30, noise sigma ~1)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, rank, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, rank, generator=g))
    s = torch.linspace(100.0, 30.0, rank)
    return (U * s) @ V.T + noise * torch.randn(n, d, generator=g)


def power_law(n=800, d=600, r=400, alpha=0.7, seed=1):
    """A slowly decaying spectrum like the paper's residuals (sigma_j ~ j^-0.7: 77 % at K=16)."""
    r = min(r, n, d)
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, r, generator=g))
    return (U * torch.arange(1, r + 1).float() ** -alpha) @ V.T


def rows_of(A, groups=("a",)):
    return lambda start, stop: {g: A[start:stop] for g in groups}


def sketch(A, l, block=37, centre=False):
    fd = FrequentDirections(A.shape[1], l, centre=centre)
    for i in range(0, A.shape[0], block):
        fd.update(A[i:i + block])
    return fd


def test_sketch_matches_exact_svd_on_low_rank_plus_noise():
    """Justified tolerances (Ghashami et al. 2016 + Davis-Kahan):

    * FD guarantees ``0 <= |Ax|^2 - |Bx|^2 <= Delta <= |A - A_k|_F^2 / (l - k)`` for every unit x, so
      by the Davis-Kahan sin-theta theorem the principal angles between the sketch's and the exact
      top-K subspaces obey ``sin <= Delta / (sigma_K^2 - sigma_{K+1}^2)``;
    * the projection error obeys ``|A - A P_K|_F^2 <= l / (l - k) |A - A_k|_F^2``.
    Both bounds are computed from the data (+ float32 slack), so the test checks the theorems.
    """
    K, l = 8, 16
    A = low_rank_plus_noise()
    fd = sketch(A, l)
    assert fd.num_shrinks > 10  # really streamed
    res = fd.result(K)
    _, S, Vt = torch.linalg.svd(A.double(), full_matrices=False)
    tail = float(S[K:].square().sum())
    assert res.shrinkage <= tail / (l - K) * (1 + 1e-4)
    gap = float(S[K - 1] ** 2 - S[K] ** 2)
    sines = subspace_sines(res.basis, Vt[:K].float())
    assert float(sines[0]) <= res.shrinkage / gap + 1e-3
    assert float(sines[0]) < 0.05  # with this gap: ~ Delta / gap ~ 0.01
    P = res.basis.double()
    err = float((A.double() - A.double() @ P.T @ P).square().sum())
    assert err <= l / (l - K) * tail * (1 + 1e-4)
    # explained variance: the sketch's value is a lower bound, the upper bound brackets the exact one
    total = float(A.double().square().sum())
    ev_exact = float(S[:K].square().sum()) / total
    ev_basis = float((A.double() @ P.T).square().sum()) / total
    assert res.explained_variance <= ev_basis + 1e-5
    assert res.explained_variance_upper >= ev_exact - 1e-5
    assert abs(ev_basis - ev_exact) < 1e-3
    assert res.total_energy == pytest.approx(total, rel=1e-5)
    # the sketch's singular values are lower bounds within Delta of the exact ones
    sv2 = res.singular_values.double().square()
    assert bool((sv2 <= S[:K].square() * (1 + 1e-4)).all())
    assert bool((sv2 >= (S[:K].square() - res.shrinkage) * (1 - 1e-5)).all())


def test_slowly_decaying_spectrum_keeps_near_optimal_explained_variance():
    """With a heavy tail no individual direction is well defined, but the captured energy is (l = 2K)."""
    K = 16
    A = power_law()
    res = sketch(A, 2 * K).result(K)
    S = torch.linalg.svdvals(A.double())
    total = float(S.square().sum())
    ev_exact = float(S[:K].square().sum()) / total
    ev_basis = float((A.double() @ res.basis.double().T).square().sum()) / total
    assert 0.6 < ev_exact < 0.9
    assert ev_exact - ev_basis < 0.005  # within half a percentage point of the optimum
    assert res.explained_variance <= ev_basis + 1e-6 <= res.explained_variance_upper + 1e-5


def test_bases_orthonormal_and_explained_variance_grows_with_rank():
    A = power_law()
    fd = sketch(A, 48)
    prev = 0.0
    for K in (4, 8, 16, 32):
        res = fd.result(K)
        gram = res.basis @ res.basis.T
        assert torch.allclose(gram, torch.eye(K), atol=1e-5)
        assert res.explained_variance > prev
        prev = res.explained_variance


def test_centred_sketch_matches_exact_centred_svd():
    K, l = 6, 24
    A = low_rank_plus_noise(rank=K, seed=3) + torch.linspace(-2, 2, 400)  # a large mean row
    res = sketch(A, l, centre=True).result(K)
    mu = A.double().mean(0)
    assert torch.allclose(res.mean.double(), mu, atol=1e-5)
    Ac = A.double() - mu
    _, S, Vt = torch.linalg.svd(Ac, full_matrices=False)
    assert float(subspace_sines(res.basis, Vt[:K].float())[0]) < 0.05
    assert res.total_energy == pytest.approx(float(Ac.square().sum()), rel=1e-4)
    assert torch.allclose(res.basis @ res.basis.T, torch.eye(K), atol=1e-5)
    # without centring the mean direction takes the first slot instead
    plain = sketch(A, l).result(K)
    assert float(subspace_sines(plain.basis[:1], (mu / mu.norm()).float()[None])[0]) < 0.05


def test_exact_when_the_sketch_holds_every_row():
    A = power_law(n=50, d=80)
    res = sketch(A, 25).result(10)  # 2 l >= N: never shrinks
    assert res.shrinkage == 0.0
    S = torch.linalg.svdvals(A)
    assert torch.allclose(res.singular_values, S[:10], rtol=1e-4)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    A = power_law(n=300, d=120)
    B = low_rank_plus_noise(n=300, d=50)
    calls = []

    def rows(start, stop):
        calls.append(start)
        return {"a": A[start:stop], "b": B[start:stop]}

    kw = dict(num_rows=300, dims={"a": 120, "b": 50}, rank={"a": 8, "b": 4}, block_size=16, oversampling=8,
              progress=False)
    full = streaming_svd(rows, **kw)

    class Crash(RuntimeError):
        pass

    def crashing(start, stop):
        if start >= 160:
            raise Crash("simulated interruption")
        return rows(start, stop)

    with pytest.raises(Crash):
        streaming_svd(crashing, progress_dir=tmp_path, checkpoint_every=3, **kw)
    assert (tmp_path / "svd_state.pt").is_file()
    calls.clear()
    resumed = streaming_svd(rows, progress_dir=tmp_path, checkpoint_every=3, **kw)
    assert resumed.resumed_from == 144  # the last checkpoint (9 blocks of 16) before the crash at row 160
    assert min(calls) == 144  # earlier rows were not regenerated
    for g in ("a", "b"):
        assert torch.equal(resumed.groups[g].basis, full.groups[g].basis)
        assert torch.equal(resumed.groups[g].singular_values, full.groups[g].singular_values)
        assert resumed.groups[g].total_energy == full.groups[g].total_energy
    # a finished state is reused as is; another run's state is refused
    again = streaming_svd(lambda *a: pytest.fail("rows regenerated"), progress_dir=tmp_path, checkpoint_every=3, **kw)
    assert torch.equal(again.groups["a"].basis, full.groups["a"].basis)
    with pytest.raises(AgoraError, match="different run"):
        streaming_svd(rows, progress_dir=tmp_path, **{**kw, "rank": {"a": 9, "b": 4}})


def test_rank_validation():
    dims = {"a": 100}
    with pytest.raises(AgoraError, match="exceeds the number of samples"):
        resolve_ranks(51, dims, 50)
    for bad in (0, -3):
        with pytest.raises(AgoraError, match="positive integer"):
            resolve_ranks(bad, dims, 50)
    with pytest.raises(AgoraError, match="unknown group"):
        resolve_ranks({"b": 3}, dims, 50)
    assert resolve_ranks({"a": 7}, dims, 50) == {"a": 7}


def test_memory_is_bounded_by_the_sketch():
    fd = FrequentDirections(1000, 10)
    for _ in range(20):
        fd.update(torch.randn(64, 1000))
    assert fd.buffer.shape == (20, 1000) and fd.rows == 1280
    assert fd.memory_bytes() == 3 * 10 * 1000 * 4
    assert math.isfinite(fd.shrinkage)
