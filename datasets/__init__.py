"""DetReIDX video data: the layout scanner (the detreidx package), synthetic XFD generator (synthetic),
which frames of a tracklet form a clip (frame_sampling), clip-consistent transforms (transforms), the
P x K identity batch sampler (identity_sampler), clip datasets and frame decoding (video), the dataset
registry (registry) and the loader builders (build)."""
