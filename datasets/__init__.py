"""DetReIDX video data: layout scanner (detreidx), synthetic XFD generator (synthetic), temporal
sampling (sampling), clip-consistent transforms (transforms), P x K identity sampler (sampler),
clip datasets and frame decoding (video), and the loader builders (build)."""
