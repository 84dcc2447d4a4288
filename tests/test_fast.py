"""The Dreamer recipes' fast backend (``recipes.dreamer.fast``) against the reference: the chunked filtering here;
the compiled steps of dreamerv2 and tempo against their eager reference in tests/test_tempo.py."""

from __future__ import annotations

import pytest
import torch
from test_rssm import SMALL, _batch

from recipes.dreamer.fast import observe_in_chunks
from worldmodels import RSSMWorldModel


@pytest.mark.parametrize("classes", [0, 5])
@pytest.mark.parametrize("chunk", [1, 2, 4, 6])
def test_observe_in_chunks_equals_one_pass_values_and_gradients(classes, chunk):
    """observe_in_chunks(K): the state carried across chunks (resets inside a chunk included, t = 3 of sequence 1)
    gives the one-pass states and gradients exactly; the chunk function sees each chunk once, in order."""
    model = RSSMWorldModel((5,), 2, classes=classes, **SMALL)
    batch = _batch((5,))
    shape = model.rssm.noise_shape(3, 6)
    noise = (torch.rand(shape), torch.rand(shape)) if classes else (torch.randn(shape), torch.randn(shape))
    seen = []

    def chunk_fn(state, embed, action, is_first, noise):
        seen.append(embed.shape[1])
        return model.rssm.observe_chunk(state, embed, action, is_first, noise)

    def chunked(batch, noise):
        embed = model.encoder(model.preprocess(batch["obs"]))
        state = model.rssm.initial(3, embed.device, embed.dtype)
        return observe_in_chunks(chunk_fn, state, embed, batch["action"], batch["is_first"].bool(), noise, chunk)

    outs = []
    for observe in (model.observe_states, chunked):
        model.zero_grad()
        post, prior = observe(batch, noise)
        out = model.loss_from_states(batch, post, prior)
        out.loss.sum().backward()
        outs.append((post, out.loss, [p.grad.clone() for p in model.parameters()]))
    assert seen == [min(chunk, 6 - i) for i in range(0, 6, chunk)]
    for k in outs[0][0]:
        torch.testing.assert_close(outs[1][0][k], outs[0][0][k], rtol=0, atol=0)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=0)
    for a, b in zip(outs[1][2], outs[0][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the same sums, in another order
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        observe_in_chunks(chunk_fn, {}, batch["obs"], batch["action"], batch["is_first"], noise, 0)
