"""What every kind's strategies share."""

from hypothesis import strategies as st

# Arrays are generated from a drawn integer seed (NumPy's PCG64): Hypothesis shrinks sizes and flags, the seed keeps
# the values reproducible and drawing fast.
seeds = st.integers(min_value=0, max_value=2**32 - 1)
