"""`loadsim size`: sweeps of pool sizes, the models (USL, Erlang C), the recommendation."""
