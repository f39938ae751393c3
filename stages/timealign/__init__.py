"""Building blocks of `vla align-time`: what streams share, offset estimation, session pooling, resampling."""
