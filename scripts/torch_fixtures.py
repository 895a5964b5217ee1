#!/usr/bin/env python3
"""Write the PyTorch reference fixtures that `crates/cells/tests/parity.rs` checks.

Each case is one safetensors file in `crates/cells/tests/fixtures/`. Metadata (string map):
`cell` (rnn | lstm | gru | indrnn | mingru | minlstm | lru | exprnn), `num_layers`, `input_size`, `hidden_size`, `gru_reset`
(after | before, GRU only), `nonlinearity` (tanh | relu, RNN only) and `scan`
(log_space, minGRU and minLSTM in their log-space form). Tensors (f32):
the `state_dict` of the torch module, `input` (B,T,I) batch-first, `h0` (L,B,H),
`c0` (L,B,H) for LSTM ((L,B,2H), [Re x | Im x], for the LRU), the expected `output` (B,T,H), `h_n`, `c_n`, a random
`grad_output` (B,T,H) and, for loss = sum(output * grad_output), `grad.input`,
`grad.h0`, `grad.c0` (LSTM, LRU) and `grad.<param>` for every parameter.

Everything is computed in float64 and stored as float32. The reset-before GRU
(Cho et al. 2014), which torch lacks, is written here with torch autograd ops; the
same code run with reset-after is checked against `torch.nn.GRU` first.

The cells torch lacks are written from their papers with autograd ops: the IndRNN
(Li et al. 2018, eq. 2), and minGRU and minLSTM (Feng et al. 2024) as the paper's
sequential mode (its listings, without the positivity map g that only its log-space
mode needs), checked first against the same recurrence solved in closed form over the
whole sequence, the parallel scan h_t = a*_t (h_0 + sum_k b_k / a*_k) with
a*_t = prod_{k<=t} a_k (Heinsen 2023), which reads no h_{t-1}. The expRNN's
orthogonal matrix comes from torch.linalg.matrix_exp (checked orthogonal to 1e-12 first).

Run:  python3 -m venv .venv && .venv/bin/pip install torch safetensors
      .venv/bin/python scripts/torch_fixtures.py
"""

import argparse
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/cells/tests/fixtures"

INPUT_SIZE = 5
HIDDEN_SIZE = 7
# (num_layers, batch, seq_len): 1 and 2 layers, B in {1, 3}, T in {1, 17}.
SHAPES = [(1, 3, 17), (1, 1, 1), (2, 3, 17), (2, 1, 1), (2, 1, 17), (1, 3, 1)]
# (file stem, cell, extra metadata)
CELLS = [
    ("rnn_tanh", "rnn", {"nonlinearity": "tanh"}),
    ("rnn_relu", "rnn", {"nonlinearity": "relu"}),
    ("lstm", "lstm", {}),
    ("gru_after", "gru", {"gru_reset": "after"}),
    ("gru_before", "gru", {"gru_reset": "before"}),
    ("indrnn", "indrnn", {}),
    ("mingru", "mingru", {}),
    ("minlstm", "minlstm", {}),
    ("lru", "lru", {}),
    ("exprnn", "exprnn", {}),
    ("mingru_log", "mingru", {"scan": "log_space"}),
    ("minlstm_log", "minlstm", {"scan": "log_space"}),
]

# Rows of `weight_ih` per unit: IndRNN h; minGRU z, h~; minLSTM f, i, h~.
BLOCKS = {"indrnn": 1, "mingru": 2, "minlstm": 3}


def g(x):
    """Feng et al.'s positivity map for the log-space mode's candidate."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x):
    return torch.where(x >= 0, (torch.relu(x) + 0.5).log(), -F.softplus(-x))


class PaperCell(torch.nn.Module):
    """IndRNN, minGRU or minLSTM stacks with torch's parameter names and layouts;
    `log_space` puts minGRU's and minLSTM's candidate through g (their log-space mode)."""

    def __init__(self, cell, input_size, hidden_size, num_layers, log_space=False):
        super().__init__()
        self.cell, self.num_layers, self.log_space = cell, num_layers, log_space
        # Twice torch's U(-1/sqrt(H), 1/sqrt(H)), as the torch modules get below.
        bound = 2.0 / hidden_size**0.5
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            rows = BLOCKS[cell] * hidden_size
            uniform = lambda *shape, bound=bound: torch.nn.Parameter(
                torch.empty(*shape, dtype=torch.float64).uniform_(-bound, bound)
            )
            setattr(self, f"weight_ih_l{layer}", uniform(rows, width))
            if cell == "indrnn":
                # The recurrent diagonal u in (-1, 1): both signs, no blow-up over 17 steps.
                setattr(self, f"weight_hh_l{layer}", uniform(hidden_size, bound=1.0))
            setattr(self, f"bias_ih_l{layer}", uniform(rows))

    def step(self, layer, x_t, h):
        pre = x_t @ getattr(self, f"weight_ih_l{layer}").T + getattr(self, f"bias_ih_l{layer}")
        if self.cell == "indrnn":
            return torch.relu(pre + getattr(self, f"weight_hh_l{layer}") * h)
        candidate = g if self.log_space else (lambda p: p)
        if self.cell == "mingru":
            k_z, tilde_h = pre.chunk(2, dim=-1)
            z = torch.sigmoid(k_z)
            return (1 - z) * h + z * candidate(tilde_h)
        k_f, k_i, tilde_h = pre.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        return f / (f + i) * h + i / (f + i) * candidate(tilde_h)

    def forward(self, x, h0):
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            h, outputs = h0[layer], []
            for t in range(layer_input.shape[1]):
                h = self.step(layer, layer_input[:, t], h)
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)
            finals.append(h)
        return layer_input, torch.stack(finals)

    def scan(self, x, h0):
        """minGRU / minLSTM as h_t = a_t h_{t-1} + b_t solved for all t at once."""
        layer_input = x
        for layer in range(self.num_layers):
            pre = layer_input @ getattr(self, f"weight_ih_l{layer}").T + getattr(self, f"bias_ih_l{layer}")
            if self.cell == "mingru":
                k_z, tilde_h = pre.chunk(2, dim=-1)
                z = torch.sigmoid(k_z)
                a, b = 1 - z, z * tilde_h
            else:
                k_f, k_i, tilde_h = pre.chunk(3, dim=-1)
                f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
                a, b = f / (f + i), i / (f + i) * tilde_h
            a_star = torch.cumprod(a, dim=1)
            layer_input = a_star * (h0[layer].unsqueeze(1) + torch.cumsum(b / a_star, dim=1))
        return layer_input

    def log_scan(self, x, h0):
        """The log-space mode, as Feng et al.'s listings (softplus forms of log a and
        log b, torch.logcumsumexp), except that h0 enters linearly, exp(A_t) h0, rather
        than through g inside the logcumsumexp: so it may be 0 or negative."""
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            pre = layer_input @ getattr(self, f"weight_ih_l{layer}").T + getattr(self, f"bias_ih_l{layer}")
            if self.cell == "mingru":
                k, p = pre.chunk(2, dim=-1)
                log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g(p)
            else:
                k_f, k_i, p = pre.chunk(3, dim=-1)
                diff = F.softplus(-k_f) - F.softplus(-k_i)
                log_a, log_b = -F.softplus(diff), -F.softplus(-diff) + log_g(p)
            a_star = torch.cumsum(log_a, dim=1)
            layer_input = torch.exp(a_star) * h0[layer].unsqueeze(1) + torch.exp(
                a_star + torch.logcumsumexp(log_b - a_star, dim=1)
            )
            finals.append(layer_input[:, -1])
        return layer_input, torch.stack(finals)


def manual_gru(module, x, h0, reset):
    """Multi-layer GRU written with autograd ops; `reset` is 'after' or 'before'."""
    layer_input = x
    finals = []
    for layer in range(module.num_layers):
        w_ih = getattr(module, f"weight_ih_l{layer}")
        w_hh = getattr(module, f"weight_hh_l{layer}")
        b_ih = getattr(module, f"bias_ih_l{layer}")
        b_hh = getattr(module, f"bias_hh_l{layer}")
        w_hr, w_hz, w_hn = w_hh.chunk(3)
        b_hr, b_hz, b_hn = b_hh.chunk(3)
        h = h0[layer]
        outputs = []
        for t in range(layer_input.shape[1]):
            gi_r, gi_z, gi_n = (layer_input[:, t] @ w_ih.T + b_ih).chunk(3, dim=1)
            r = torch.sigmoid(gi_r + h @ w_hr.T + b_hr)
            z = torch.sigmoid(gi_z + h @ w_hz.T + b_hz)
            if reset == "after":
                n = torch.tanh(gi_n + r * (h @ w_hn.T + b_hn))
            else:
                n = torch.tanh(gi_n + (r * h) @ w_hn.T + b_hn)
            h = (1 - z) * n + z * h
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)
        finals.append(h)
    return layer_input, torch.stack(finals)


class LruReference(torch.nn.Module):
    """The LRU (Orvieto et al. 2023) in torch's complex arithmetic, as rnnlab lays out its
    parameters: nu_log, theta_log (H), weight_ih (3H, I) = [B_re; B_im; D], bias (H),
    weight_c (H, 2H) = [C_re | -C_im]; the state c is [Re x | Im x]."""

    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self.num_layers, self.hidden = num_layers, hidden_size
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            # The paper's ring: |lambda| uniform in area in [0.9, 0.999], phase in [0, 2 pi].
            u1, u2 = torch.rand(hidden_size, dtype=torch.float64), torch.rand(hidden_size, dtype=torch.float64)
            nu_log = torch.log(-0.5 * torch.log(u1 * (0.999**2 - 0.9**2) + 0.9**2))
            theta_log = torch.log(2 * torch.pi * u2)
            param = lambda t: torch.nn.Parameter(t)
            setattr(self, f"nu_log_l{layer}", param(nu_log))
            setattr(self, f"theta_log_l{layer}", param(theta_log))
            normal = lambda *shape, std: param(std * torch.randn(*shape, dtype=torch.float64))
            setattr(self, f"weight_ih_l{layer}", normal(3 * hidden_size, width, std=0.7))
            setattr(self, f"bias_l{layer}", normal(hidden_size, std=0.3))
            setattr(self, f"weight_c_l{layer}", normal(hidden_size, 2 * hidden_size, std=0.5))

    def forward(self, u, h0, c0):
        H = self.hidden
        layer_input, finals_h, finals_c = u, [], []
        for layer in range(self.num_layers):
            p = lambda name: getattr(self, f"{name}_l{layer}")
            lam = torch.exp(-torch.exp(p("nu_log")) + 1j * torch.exp(p("theta_log")))
            gamma = torch.sqrt(1 - lam.abs() ** 2)
            w = p("weight_ih")
            B, D = torch.complex(w[:H], w[H : 2 * H]), w[2 * H :]
            C = torch.complex(p("weight_c")[:, :H], -p("weight_c")[:, H:])
            x = torch.complex(c0[layer][:, :H], c0[layer][:, H:])
            outputs, h = [], h0[layer]
            for t in range(layer_input.shape[1]):
                u_t = layer_input[:, t]
                x = lam * x + gamma * (u_t.to(torch.complex128) @ B.T)
                y = (x @ C.T).real + u_t @ D.T + p("bias")
                h = torch.nn.functional.gelu(y, approximate="tanh")
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)
            finals_h.append(h)
            finals_c.append(torch.cat([x.real, x.imag], dim=-1))
        return layer_input, torch.stack(finals_h), torch.stack(finals_c)


class ExpRnnReference(torch.nn.Module):
    """The expRNN (Lezcano-Casado & Martinez-Rubio 2019) as their OrthogonalRNN computes
    it, W = matrix_exp(A - A^T) by torch.linalg.matrix_exp (Pade approximants, not
    rnnlab's Taylor polynomial), modrelu(z) = sign(z) relu(|z| + b), no input bias; A's
    strictly upper triangle stored packed row by row as log_weight_hh (H(H-1)/2)."""

    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self.num_layers, self.hidden = num_layers, hidden_size
        param = lambda t: torch.nn.Parameter(t)
        normal = lambda *shape, std: param(std * torch.randn(*shape, dtype=torch.float64))
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            setattr(self, f"weight_ih_l{layer}", normal(hidden_size, width, std=0.7))
            # A general generator (not the Henaff blocks), so every entry's gradient counts.
            setattr(self, f"log_weight_hh_l{layer}", normal(hidden_size * (hidden_size - 1) // 2, std=0.6))
            # Biases of both signs, some below -|z|, so that modrelu switches units off.
            setattr(self, f"bias_l{layer}", normal(hidden_size, std=0.5))

    def recurrent(self, layer):
        H = self.hidden
        rows, cols = torch.triu_indices(H, H, offset=1)
        A = torch.zeros(H, H, dtype=torch.float64)
        A = A.index_put((rows, cols), getattr(self, f"log_weight_hh_l{layer}"))
        return torch.linalg.matrix_exp(A - A.T)

    def forward(self, x, h0):
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            W = self.recurrent(layer)
            w_ih, b = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"bias_l{layer}")
            outputs, h = [], h0[layer]
            for t in range(layer_input.shape[1]):
                z = layer_input[:, t] @ w_ih.T + h @ W.T
                h = torch.sign(z) * torch.relu(torch.abs(z) + b)
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)
            finals.append(h)
        return layer_input, torch.stack(finals)


def make_case(cell, extra, num_layers, batch, seq_len, seed):
    torch.manual_seed(seed)
    kwargs = dict(
        input_size=INPUT_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_layers=num_layers,
        batch_first=True,
        dtype=torch.float64,
    )
    if cell == "lru":
        module = LruReference(INPUT_SIZE, HIDDEN_SIZE, num_layers)
    elif cell == "exprnn":
        module = ExpRnnReference(INPUT_SIZE, HIDDEN_SIZE, num_layers)
        for layer in range(num_layers):
            W = module.recurrent(layer).detach()
            eye = torch.eye(HIDDEN_SIZE, dtype=torch.float64)
            assert torch.allclose(W.T @ W, eye, atol=1e-12), "matrix_exp of a skew matrix is not orthogonal"
    elif cell in BLOCKS:
        module = PaperCell(cell, INPUT_SIZE, HIDDEN_SIZE, num_layers, extra.get("scan") == "log_space")
    elif cell == "rnn":
        module = torch.nn.RNN(nonlinearity=extra["nonlinearity"], **kwargs)
    elif cell == "lstm":
        module = torch.nn.LSTM(**kwargs)
    else:
        module = torch.nn.GRU(**kwargs)
    # Widen the default U(-1/sqrt(H), 1/sqrt(H)) so that gates leave their linear range.
    if cell not in BLOCKS and cell not in ("lru", "exprnn"):
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(2.0)

    x = torch.randn(batch, seq_len, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    h0 = (0.5 * torch.randn(num_layers, batch, HIDDEN_SIZE, dtype=torch.float64)).requires_grad_()
    c0 = (0.5 * torch.randn(num_layers, batch, HIDDEN_SIZE, dtype=torch.float64)).requires_grad_()

    tensors = {}
    if cell == "lru":
        c0 = (0.5 * torch.randn(num_layers, batch, 2 * HIDDEN_SIZE, dtype=torch.float64)).requires_grad_()
        output, h_n, c_n = module(x, h0, c0)
        tensors["c0"] = c0
        tensors["c_n"] = c_n
    elif cell == "lstm":
        output, (h_n, c_n) = module(x, (h0, c0))
        tensors["c0"] = c0
        tensors["c_n"] = c_n
    elif cell == "gru":
        if extra["gru_reset"] == "after":
            output, h_n = module(x, h0)
            manual_out, manual_h = manual_gru(module, x, h0, "after")
            assert torch.allclose(manual_out, output, atol=1e-12), "manual GRU != torch.nn.GRU"
            assert torch.allclose(manual_h, h_n, atol=1e-12), "manual GRU != torch.nn.GRU"
        else:
            output, h_n = manual_gru(module, x, h0, "before")
    elif extra.get("scan") == "log_space":
        output, h_n = module.log_scan(x, h0)
        sequential, _ = module(x, h0)
        assert torch.allclose(sequential, output, atol=1e-10), f"{cell}: log-space != sequential with g"
    else:
        output, h_n = module(x, h0)
        if cell in ("mingru", "minlstm"):
            scanned = module.scan(x, h0)
            assert torch.allclose(scanned, output, atol=1e-10), f"{cell}: scan != sequential"

    grad_output = torch.randn_like(output)
    loss = (output * grad_output).sum()
    params = dict(module.named_parameters())
    has_c = cell in ("lstm", "lru")
    wrt = [x, h0] + ([c0] if has_c else []) + list(params.values())
    # The LRU never reads h0: its gradient is zero (autograd reports none).
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
    names = ["input", "h0"] + (["c0"] if has_c else []) + list(params)

    tensors.update(params)
    tensors.update(input=x, h0=h0, output=output, h_n=h_n, grad_output=grad_output)
    for name, grad in zip(names, grads):
        tensors[f"grad.{name}"] = grad
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    metadata = {
        "cell": cell,
        "num_layers": str(num_layers),
        "input_size": str(INPUT_SIZE),
        "hidden_size": str(HIDDEN_SIZE),
        **extra,
    }
    return tensors, metadata


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seed = 0
    for stem, cell, extra in CELLS:
        for num_layers, batch, seq_len in SHAPES:
            seed += 1
            tensors, metadata = make_case(cell, extra, num_layers, batch, seq_len, seed)
            path = args.out / f"{stem}_l{num_layers}_b{batch}_t{seq_len}.safetensors"
            save_file(tensors, str(path), metadata=metadata)
            print(f"wrote {path.relative_to(args.out.parent.parent.parent.parent)}")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
