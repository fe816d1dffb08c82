"""The prompt order (aha/data.py) and the seeds it derives from (aha/seeding.py)."""

from aha.data import next_indices


def test_prompt_cursor_walks_epochs_deterministically():
    s1, s2 = {"epoch": 0, "cursor": 0}, {"epoch": 0, "cursor": 0}
    a = [next_indices(5, 3, s1, seed=0) for _ in range(4)]
    b = [next_indices(5, 3, s2, seed=0) for _ in range(4)]
    assert a == b and sorted(a[0] + a[1][:2]) == [0, 1, 2, 3, 4] and s1["epoch"] == 2


def test_the_derived_seeds_are_the_streams_runs_have_always_used():
    """Changing a stream changes every run's data order or samples and breaks bit-exact resume of
    older checkpoints: these pin them."""
    import torch

    from aha.data import fresh_state
    from aha.seeding import data_order_seed, resharded_sampling_seed, sampling_seed

    assert data_order_seed(3, 2) == 3 * 100_003 + 2
    assert sampling_seed(5, 0) == 5 and sampling_seed(5, 2) == 5 + 2 * 1009
    assert resharded_sampling_seed(4, 1) == 4 * 7919 + 1
    state = fresh_state()
    first = next_indices(10, 4, state, seed=7)
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100_003)).tolist()[:4]
    assert state == {"step": 0, "epoch": 0, "cursor": 4}
