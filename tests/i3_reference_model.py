"""A plain, standalone transcription of the reference i3 architecture (nbs/reference.md, sections 1.1-1.4 and 4), used by the tests
as ground truth. It shares no code with i3_edu: a per-timestep Python loop for the hybrid layer, attention written out,
the same module and attribute names as the reference (so state-dict keys are the reference's), and the reference's
re-run-everything generation loop."""
import math
import torch
import torch.nn.functional as F
from torch import nn


class RWKVMambaHybrid(nn.Module):
    def __init__(self, d_model, d_state=32):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.w_mix = nn.Parameter(torch.ones(d_model) * 0.5)
        self.A = nn.Parameter(torch.randn(d_state, d_state) * 0.01)
        self.B = nn.Parameter(torch.randn(d_state, d_model) * 0.01)
        self.C = nn.Parameter(torch.randn(d_model, d_state) * 0.01)
        self.D = nn.Parameter(torch.ones(d_model) * 0.1)

    def forward(self, x):
        batch, T, _ = x.shape
        h = torch.zeros(batch, self.d_model, dtype=x.dtype, device=x.device)
        s = torch.zeros(batch, self.d_state, dtype=x.dtype, device=x.device)
        outs = []
        for t in range(T):
            x_t = x[:, t]
            h = self.w_mix * h + (1 - self.w_mix) * x_t
            s = s @ self.A.T + x_t @ self.B.T
            outs.append(s @ self.C.T + h * self.D)
        return torch.stack(outs, dim=1)


class FullAttention(nn.Module):
    def __init__(self, d_model, n_heads=16):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        batch, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(batch, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, T, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = torch.triu(torch.ones(T, T, device=x.device), diagonal=1).bool()
        scores = scores.masked_fill(mask, float('-inf'))
        attn = F.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2).contiguous().view(batch, T, D)
        return self.out_proj(out)


class i3Block(nn.Module):
    def __init__(self, d_model, n_heads, d_state, use_attention):
        super().__init__()
        self.use_attention = use_attention
        self.ln1 = nn.LayerNorm(d_model)
        if use_attention:
            self.attn = FullAttention(d_model, n_heads)
        else:
            self.hybrid = RWKVMambaHybrid(d_model, d_state)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + (self.attn(self.ln1(x)) if self.use_attention else self.hybrid(self.ln1(x)))
        return x + self.ffn(self.ln2(x))


class i3Model(nn.Module):
    def __init__(self, vocab_size=35560, d_model=512, n_heads=16, max_seq_len=256, d_state=32, n_hybrid=10, n_attn=6):
        super().__init__()
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_seq_len, d_model)
        self.layers = nn.ModuleList([i3Block(d_model, n_heads, d_state, use_attention=i >= n_hybrid)
                                     for i in range(n_hybrid + n_attn)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        batch, T = idx.shape
        x = self.embed(idx) + self.pos_embed(torch.arange(T, device=idx.device))
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, return_logits=False):
        "The reference loop: re-run the last max_seq_len tokens for every new token; sample with temperature and top-k."
        steps = []
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.max_seq_len:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :]
            steps.append(logits)
            logits = logits / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return (idx, torch.stack(steps, 1)) if return_logits else idx
