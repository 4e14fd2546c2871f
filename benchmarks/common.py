"""Helpers shared by the benchmark scripts (imported as a sibling: run the scripts by path)."""

from __future__ import annotations

import torch


def fixed_batches(
    model: torch.nn.Module, batch_size: int, seq_len: int, steps: int, seed: int = 0
) -> list[dict]:
    """`steps` classification batches of random token ids, all `batch_size` x `seq_len`, two labels."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    return [
        {
            "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=generator),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator),
        }
        for _ in range(steps)
    ]
