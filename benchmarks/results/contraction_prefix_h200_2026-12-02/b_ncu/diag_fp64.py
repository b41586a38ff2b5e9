"""fp64 triton vs reference polynomial contraction at model size on the GPU: forward, first, second."""
import torch
from lpmace.kernels.polynomial import polynomial_contraction
from lpmace.kernels.monomials import monomial_table
torch.manual_seed(0)
for (n, C, D, deg, S, O, Q) in [(864, 128, 16, 3, 4, 4, 1), (864, 128, 16, 3, 4, 1, 1), (100, 8, 16, 3, 4, 4, 1), (864, 32, 16, 2, 4, 16, 4)]:
    t = monomial_table(D, 3); R = t.rows_up_to[deg]
    a = torch.randn(n, C, D, dtype=torch.float64, device="cuda", requires_grad=True)
    sp = torch.randint(0, S, (n,), device="cuda")
    T = torch.randn(S, C, R, O, Q, dtype=torch.float64, device="cuda", requires_grad=True)
    g = torch.randn(n, C, Q, dtype=torch.float64, device="cuda", requires_grad=True)
    ent = tuple(x.cuda() for x in t.derivative_tensors())
    res = {}
    for impl in ("reference", "triton"):
        out = polynomial_contraction(a, sp, t.index[:R].cuda(), T, g, impl=impl, derivative=ent)
        first = torch.autograd.grad((out ** 2).sum(), (a, T, g), create_graph=True)
        second = torch.autograd.grad((first[0] ** 2).sum(), (a, T, g), allow_unused=True)
        res[impl] = [out, *first, *second]
    errs = [((x - y).norm() / y.norm()).item() if y is not None and x is not None else None for x, y in zip(res["triton"], res["reference"])]
    print((n, C, D, deg, S, O, Q), ["%.1e" % e if e is not None else None for e in errs], flush=True)
