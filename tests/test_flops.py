import torch

from adaptive_encoder.flops import encoder_flops, ideal_speedup, layer_flops


def test_layer_flops_hand_count():
    # q=2, k=3, pairs=6, D=4, F=8: 4*2*16 + 4*3*16 + 4*6*4 + 4*2*4*8 = 128+192+96+256
    assert layer_flops(2, 3, 6, 4, 8) == 672


def test_encoder_flops_adaptive_vs_full():
    depths = torch.tensor([[1, 2, 0], [2, 2, 2]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    D, F = 4, 8
    # layer 0: q_b = (2, 3), k_b = (2, 3); layer 1: q_b = (1, 3); layer 2: nothing -> stop.
    expect = layer_flops(5, 5, 2 * 2 + 3 * 3, D, F) + layer_flops(4, 5, 1 * 2 + 3 * 3, D, F)
    assert encoder_flops(depths, mask, 3, D, F) == expect
    full = 3 * layer_flops(5, 5, 13, D, F)
    assert encoder_flops(depths, mask, 3, D, F, adaptive=False) == full
    assert ideal_speedup(depths, mask, 3, D, F) == full / expect


def test_ideal_speedup_is_one_at_full_depth_and_grows_as_depth_shrinks():
    mask = torch.ones(2, 10)
    assert ideal_speedup(torch.full((2, 10), 6), mask, 6, 64, 256) == 1.0
    shallow = torch.ones(2, 10, dtype=torch.long)
    shallow[:, 0] = 6  # n_max = N, everything else stops at layer 1
    s1 = ideal_speedup(shallow, mask, 6, 64, 256)
    deeper = shallow.clone()
    deeper[:, 1:4] = 3
    assert 1.0 < ideal_speedup(deeper, mask, 6, 64, 256) < s1
