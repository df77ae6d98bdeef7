"Helpers shared by the benchmark scripts: random data with the split interface, and a tokenizer to sample with."
import torch

class RandomTokens:
    "A data split of random ids with the `.sample(batch_size, seq_len, generator)` interface (speed ignores the text)."
    def __init__(self, vocab_size:int): self.V = vocab_size
    def __len__(self): return 10**9
    def sample(self, batch_size, seq_len, generator=None, device='cpu', cross_docs=True):
        w = torch.randint(0, self.V, (batch_size, seq_len + 1), generator=generator)   # (B, T+1)
        return w[:, :-1].to(device), w[:, 1:].to(device)

class CharTokens:
    "One id per character code (mod V): lets the trainer time its text samples at any vocabulary size."
    def __init__(self, vocab_size:int): self.vocab_size = vocab_size
    def encode(self, text:str): return [ord(c) % self.vocab_size for c in text]
    def decode(self, ids): return ''.join(chr(32 + i % 95) for i in ids)

class RandomData:
    "Train and validation splits of random ids plus `CharTokens`: what a `Learner` needs to run its whole loop."
    def __init__(self, vocab_size:int):
        self.train, self.val, self.tokenizer = RandomTokens(vocab_size), RandomTokens(vocab_size), CharTokens(vocab_size)
